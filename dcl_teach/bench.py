"""Benchmarks, measured side by side in one run and reported as ratios.

``python -m dcl_teach.bench loss`` (the default) times forward + backward of the contrastive
losses and measures their peak extra memory, for the fused kernel, the naive full-matrix version
and the "matmul floor": the three GEMMs that any forward and backward pass of these losses needs
(``S = Z Z^T``, then ``S Z`` and ``S^T Z``). If lightly or pytorch-metric-learning are installed
(``pip install --no-deps lightly pytorch-metric-learning`` is enough), their losses for the same
quantity run in the same table: lightly's ``DCLLoss``/``DCLWLoss``/``NTXentLoss`` and
pytorch-metric-learning's symmetric ``NTXentLoss``.

``python -m dcl_teach.bench train`` measures the training data pipeline (see
:mod:`dcl_teach.bench_train`).

Times are medians over interleaved rounds (every variant once per round), so that a machine
that slows down hurts all variants alike. Peak extra memory is measured in a fresh process per
variant: on the CPU as the growth of the peak resident set size over the inputs, on CUDA with
``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from dcl_teach import __version__
from dcl_teach.losses import LOSSES


def machine_info(device: str) -> dict[str, object]:
    """Describe the machine: CPU model, cores, threads, torch version, and the GPU if used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dcl_teach": __version__,
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _inputs(n: int, d: int, device: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    z1 = torch.randn(n, d, generator=g).to(device).requires_grad_()
    z2 = (z1.detach() + 0.5 * torch.randn(n, d, generator=g).to(device)).requires_grad_()
    return z1, z2


def _lightly_module(name: str):
    """Import ``lightly.loss.<name>``; ``lightly.loss`` itself imports torchvision for unrelated
    losses, so without torchvision the module file is loaded on its own."""
    import importlib
    import importlib.util

    try:
        return importlib.import_module(f"lightly.loss.{name}")
    except ImportError:
        import lightly.utils.dist  # noqa: F401 - the one lightly import the loss modules need

        root = importlib.util.find_spec("lightly").submodule_search_locations[0]
        spec = importlib.util.spec_from_file_location(f"_lightly_{name}", f"{root}/loss/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def _third_party(loss: str, tau: float) -> dict[str, Callable]:
    """Losses of other libraries for the same quantity, when they are installed."""
    out: dict[str, Callable] = {}
    try:
        if loss == "dcl":
            out["lightly DCLLoss"] = _lightly_module("dcl_loss").DCLLoss(temperature=tau)
        elif loss == "dclw":
            out["lightly DCLWLoss"] = _lightly_module("dcl_loss").DCLWLoss(temperature=tau)
        else:
            out["lightly NTXentLoss"] = _lightly_module("ntx_ent_loss").NTXentLoss(temperature=tau)
    except Exception:  # noqa: BLE001 - not installed, or does not import here
        pass
    if loss == "infonce":
        try:
            from pytorch_metric_learning.losses import (  # type: ignore[import-not-found]
                NTXentLoss,
                SelfSupervisedLoss,
            )

            out["pytorch-metric-learning"] = SelfSupervisedLoss(
                NTXentLoss(temperature=tau), symmetric=True
            )
        except Exception:  # noqa: BLE001
            pass
    return out


def variants(loss: str, tau: float) -> dict[str, Callable]:
    """Name -> function of (z1, z2) running one forward and backward pass."""
    fn = LOSSES[loss]

    def run(f):
        def step(z1, z2):
            f(z1, z2).backward()
            z1.grad = z2.grad = None

        return step

    def floor(z1, z2):
        z = torch.cat([z1.detach(), z2.detach()])  # (2N, D)
        s = z @ z.t()  # (2N, 2N)
        s @ z, s.t() @ z  # (2N, D) twice: the two gradient products

    out = {
        "matmul floor": floor,
        "fused": run(lambda a, b: fn(a, b, tau=tau)),
        "naive": run(lambda a, b: fn(a, b, tau=tau, impl="dense")),
    }
    out.update({name: run(f) for name, f in _third_party(loss, tau).items()})
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variants(
    n: int, d: int, *, loss: str, tau: float, device: str, repeats: int, names: list[str]
) -> dict[str, float]:
    """Median seconds of one forward + backward per variant, interleaved over rounds.

    A variant that fails (typically out of memory at large N) gets ``None`` and a message.
    """
    z1, z2 = _inputs(n, d, device)
    funcs = {k: v for k, v in variants(loss, tau).items() if k in names}
    times: dict[str, list[float]] = {k: [] for k in funcs}
    for name, f in list(funcs.items()):  # warm-up
        try:
            f(z1, z2)
        except (RuntimeError, MemoryError) as err:
            print(f"{name} failed at N={n}: {str(err).splitlines()[0][:200]}", file=sys.stderr)
            del funcs[name]
            times[name] = []
            z1.grad = z2.grad = None
    for _ in range(repeats):
        for name, f in funcs.items():
            _sync(device)
            t0 = time.perf_counter()
            f(z1, z2)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) if v else None for k, v in times.items()}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _probe(args: argparse.Namespace) -> None:
    """Run one variant once in this (fresh) process and print its peak extra memory in bytes."""
    z1, z2 = _inputs(args.n, args.dim, args.device)
    f = variants(args.loss, args.tau)[args.variant]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        f(z1, z2)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        # warm the allocator and thread pools on a tiny case, then reset the peak RSS mark
        small = _inputs(8, args.dim, args.device)
        f(*small)
        with open("/proc/self/clear_refs", "w") as cr:
            cr.write("5")
        base = _rss_kib("VmRSS:")
        f(z1, z2)
        peak = (_rss_kib("VmHWM:") - base) * 1024
    print(json.dumps({"peak_bytes": peak}))


def peak_memory(n: int, d: int, *, loss: str, tau: float, device: str, variant: str) -> int | None:
    """Peak extra bytes of one forward + backward of ``variant``, in a fresh process."""
    cmd = [sys.executable, "-m", "dcl_teach.bench", "_probe", "--variant", variant]
    cmd += ["--n", str(n), "--dim", str(d), "--loss", loss, "--tau", str(tau), "--device", device]
    cmd += ["--threads", str(torch.get_num_threads())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        print(
            f"memory probe failed for {variant} at N={n}: {res.stderr.strip()[-300:]}",
            file=sys.stderr,
        )
        return None
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


def run_loss_bench(args: argparse.Namespace) -> dict[str, object]:
    """Run the loss benchmark, print the table, return the report."""
    names = list(variants(args.loss, args.tau))
    rows = []
    for n in args.sizes:
        times = time_variants(
            n,
            args.dim,
            loss=args.loss,
            tau=args.tau,
            device=args.device,
            repeats=args.repeats,
            names=names,
        )
        for name in names:
            mem = None
            if times[name] is None:
                rows.append(
                    {
                        "N": n,
                        "variant": name,
                        "seconds": None,
                        "vs_floor": None,
                        "naive_vs_this": None,
                        "peak_extra_MiB": None,
                        "failed": True,
                    }
                )
                continue
            if not args.no_memory:
                mem = peak_memory(
                    n, args.dim, loss=args.loss, tau=args.tau, device=args.device, variant=name
                )
            rows.append(
                {
                    "N": n,
                    "variant": name,
                    "seconds": times[name],
                    "vs_floor": times[name] / times["matmul floor"],
                    "naive_vs_this": times["naive"] / times[name],
                    "peak_extra_MiB": None if mem is None else mem / 2**20,
                }
            )
    report = {
        "benchmark": "loss forward+backward",
        "loss": args.loss,
        "tau": args.tau,
        "D": args.dim,
        "dtype": "float32",
        "repeats": args.repeats,
        "machine": machine_info(args.device),
        "results": rows,
    }
    print(format_table(report))
    return report


def format_table(report: dict[str, object]) -> str:
    """The report as a text table."""
    lines = [
        f"{report['loss']} forward+backward, D={report['D']}, float32, tau={report['tau']}, "
        f"median of {report['repeats']} on {report['machine']['device']} "  # type: ignore[index]
        f"({report['machine']['cpu']}, {report['machine']['torch_threads']} threads)",  # type: ignore[index]
        f"{'N':>6} {'variant':<26} {'ms':>10} {'x floor':>8} {'naive/this':>11} {'peak MiB':>9}",
    ]
    for r in report["results"]:  # type: ignore[union-attr]
        if r.get("failed"):
            lines.append(f"{r['N']:>6} {r['variant']:<26} {'failed (see stderr)':>20}")
            continue
        mem = "-" if r["peak_extra_MiB"] is None else f"{r['peak_extra_MiB']:.1f}"
        lines.append(
            f"{r['N']:>6} {r['variant']:<26} {1e3 * r['seconds']:>10.1f} {r['vs_floor']:>8.2f} "
            f"{r['naive_vs_this']:>11.2f} {mem:>9}"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dcl_teach.bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("what", nargs="?", default="loss", choices=["loss", "train", "_probe"])
    p.add_argument("--loss", default="dcl", choices=sorted(LOSSES), help="which loss (default dcl)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096], help="values of N")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension D")
    p.add_argument("--tau", type=float, default=0.1, help="temperature")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--variant", default="fused", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=256, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> dict[str, object] | None:
    """Command-line entry point: ``python -m dcl_teach.bench [loss|train] ...``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        from dcl_teach import bench_train

        return bench_train.main(argv[1:])
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "_probe":
        _probe(args)
        return None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but CUDA is not available here")
    report = run_loss_bench(args)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
