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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from dcl_teach.atomic import atomic_write
from dcl_teach.losses import LOSSES
from dcl_teach.provenance import machine_info


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
    except Exception:  # not installed, or does not import here
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
        except Exception:
            pass
    return out


def variants(loss: str, tau: float, taus: tuple[float, ...] = ()) -> dict[str, Callable]:
    """Name -> function of (z1, z2) running one forward and backward pass.

    ``taus`` adds a row ``"fused tau=<t>"`` per other temperature, so that the cost of the
    temperature shows side by side with the rest (it should have none).
    """
    fn = LOSSES[loss]

    def run(f):
        def step(z1, z2):
            f(z1, z2).backward()
            z1.grad = z2.grad = None

        return step

    def floor(z1, z2):
        z = torch.cat([z1.detach(), z2.detach()])  # (2N, D)
        # in row blocks of at most 256 MiB, so that it runs at any N (one block up to N = 4096)
        rows = max(1, (1 << 26) // z.shape[0])
        for r0 in range(0, z.shape[0], rows):
            s = z[r0 : r0 + rows] @ z.t()  # (rows, 2N)
            s @ z, s.t() @ z[r0 : r0 + rows]  # the two gradient products, block by block

    out = {
        "matmul floor": floor,
        "fused": run(lambda a, b: fn(a, b, tau=tau)),
        "naive": run(lambda a, b: fn(a, b, tau=tau, impl="dense")),
    }
    for t in taus:
        if t != tau:
            out[f"fused tau={t:g}"] = run(lambda a, b, t=t: fn(a, b, tau=t))
    out.update({name: run(f) for name, f in _third_party(loss, tau).items()})
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variants(
    n: int,
    d: int,
    *,
    loss: str,
    tau: float,
    device: str,
    repeats: int,
    names: list[str],
    taus: tuple[float, ...] = (),
    warmup: bool = True,
) -> dict[str, float]:
    """Median seconds of one forward + backward per variant, interleaved over rounds.

    A variant that fails (typically out of memory at large N) gets ``None`` and a message.
    """
    z1, z2 = _inputs(n, d, device)
    funcs = {k: v for k, v in variants(loss, tau, taus).items() if k in names}
    times: dict[str, list[float]] = {k: [] for k in funcs}
    for name, f in list(funcs.items()):  # warm-up (or, without it, a first timed round)
        try:
            if warmup:
                f(z1, z2)
            else:
                t0 = time.perf_counter()
                f(z1, z2)
                times[name].append(time.perf_counter() - t0)
        except (RuntimeError, MemoryError) as err:
            print(f"{name} failed at N={n}: {str(err).splitlines()[0][:200]}", file=sys.stderr)
            del funcs[name]
            times[name] = []
            z1.grad = z2.grad = None
    for _ in range(repeats if warmup else repeats - 1):
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
    f = variants(args.loss, args.tau, tuple(args.taus))[args.variant]
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


def peak_memory(
    n: int,
    d: int,
    *,
    loss: str,
    tau: float,
    device: str,
    variant: str,
    taus: tuple[float, ...] = (),
) -> int | None:
    """Peak extra bytes of one forward + backward of ``variant``, in a fresh process."""
    cmd = [sys.executable, "-m", "dcl_teach.bench", "_probe", "--variant", variant]
    cmd += ["--n", str(n), "--dim", str(d), "--loss", loss, "--tau", str(tau), "--device", device]
    cmd += ["--taus", *map(str, taus)] if taus else []
    cmd += ["--threads", str(torch.get_num_threads())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        print(
            f"memory probe failed for {variant} at N={n}: {res.stderr.strip()[-300:]}",
            file=sys.stderr,
        )
        return None
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


#: Bytes per entry of the 2N x 2N matrix that a variant keeps alive at its peak (measured: the
#: naive DCL reaches about 4.3 float32 matrices, lightly about 2.9). Used to skip a variant that
#: would not fit rather than let it exhaust the machine.
MATRICES_AT_PEAK = {"naive": 5.0, "third party": 5.0}


def available_bytes(device: str) -> int:
    """Memory that a variant may still take: ``MemAvailable`` on the CPU, free memory on CUDA."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not in /proc/meminfo")


def skip_reason(n: int, variant: str, available: int) -> str | None:
    """Why ``variant`` is not run at ``N = n`` (predicted out of memory), or ``None``.

    The fused variants and the blocked matmul floor keep no 2N x 2N matrix and always run.

    Example:
        >>> skip_reason(32768, "naive", 24 * 2**30)
        'out of memory: needs about 80.0 GiB (5 x the 2N x 2N float32 matrix), 24.0 GiB available'
        >>> skip_reason(32768, "fused", 24 * 2**30) is None
        True
    """
    if variant == "matmul floor" or variant.startswith("fused"):
        return None
    factor = MATRICES_AT_PEAK.get(variant, MATRICES_AT_PEAK["third party"])
    need = factor * 4 * (2 * n) ** 2
    if need <= 0.8 * available:
        return None
    return (
        f"out of memory: needs about {need / 2**30:.1f} GiB ({factor:g} x the 2N x 2N float32 "
        f"matrix), {available / 2**30:.1f} GiB available"
    )


def run_loss_bench(args: argparse.Namespace) -> dict[str, object]:
    """Run the loss benchmark, print the table, return the report."""
    taus = tuple(args.taus)
    all_names = list(variants(args.loss, args.tau, taus))
    main_fused = "fused"
    rows = []
    for n in args.sizes:
        available = available_bytes(args.device)
        skipped = {k: skip_reason(n, k, available) for k in all_names}
        names = [k for k in all_names if skipped[k] is None]
        if args.variants:
            names = [k for k in names if k in args.variants]
        for k, why in skipped.items():
            if why is not None:
                print(f"{k} skipped at N={n}: {why}", file=sys.stderr)
        times = time_variants(
            n,
            args.dim,
            loss=args.loss,
            tau=args.tau,
            device=args.device,
            repeats=args.repeats,
            names=names,
            taus=taus,
            warmup=not args.no_warmup,
        )
        floor, naive = times.get("matmul floor"), times.get("naive")
        for name in all_names:
            if args.variants and name not in args.variants:
                continue
            t = times.get(name)
            row: dict[str, object] = {"N": n, "variant": name, "tau": args.tau}
            if name.startswith("fused tau="):
                row["tau"] = float(name.split("=", 1)[1])
            if t is None:
                row |= {"seconds": None, "vs_floor": None, "naive_vs_this": None}
                row |= {"peak_extra_MiB": None, "failed": True}
                row["reason"] = skipped[name] or "failed (see stderr)"
                rows.append(row)
                continue
            mem = None
            if not args.no_memory:
                mem = peak_memory(
                    n,
                    args.dim,
                    loss=args.loss,
                    tau=args.tau,
                    device=args.device,
                    variant=name,
                    taus=taus,
                )
            row |= {
                "seconds": t,
                "vs_floor": None if floor is None else t / floor,
                "naive_vs_this": None if naive is None else naive / t,
                "peak_extra_MiB": None if mem is None else mem / 2**20,
            }
            if name.startswith("fused tau=") and times.get(main_fused):
                row["vs_fused"] = t / times[main_fused]
            rows.append(row)
    report = {
        "benchmark": "loss forward+backward",
        "loss": args.loss,
        "tau": args.tau,
        "taus": list(taus),
        "D": args.dim,
        "dtype": "float32",
        "repeats": args.repeats,
        "machine": machine_info(args.device),
        "results": rows,
    }
    print(format_table(report))
    return report


def format_table(report: dict[str, object]) -> str:
    """The report as a text table; ``x fused`` compares a temperature with the main one."""
    lines = [
        f"{report['loss']} forward+backward, D={report['D']}, float32, tau={report['tau']}, "
        f"median of {report['repeats']} on {report['machine']['device']} "  # type: ignore[index]
        f"({report['machine']['cpu']}, {report['machine']['torch_threads']} threads)",  # type: ignore[index]
        f"{'N':>6} {'variant':<26} {'ms':>10} {'x floor':>8} {'naive/this':>11} {'peak MiB':>9}"
        f" {'x fused':>8}",
    ]

    def num(x: object, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for r in report["results"]:  # type: ignore[union-attr]
        if r.get("failed"):
            lines.append(f"{r['N']:>6} {r['variant']:<26} {r.get('reason', 'failed')}")
            continue
        lines.append(
            f"{r['N']:>6} {r['variant']:<26} {1e3 * r['seconds']:>10.1f} "
            f"{num(r['vs_floor'], '.2f'):>8} {num(r['naive_vs_this'], '.2f'):>11} "
            f"{num(r['peak_extra_MiB'], '.1f'):>9} {num(r.get('vs_fused'), '.2f'):>8}"
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
    p.add_argument(
        "--taus",
        type=float,
        nargs="*",
        default=[0.01, 0.1, 0.5],
        help="also time the fused loss at these temperatures, side by side (none: --taus)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    p.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first call too (for large N, where one call takes minutes)",
    )
    p.add_argument("--variants", nargs="+", default=None, help="only these variants (default: all)")
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
        atomic_write(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
