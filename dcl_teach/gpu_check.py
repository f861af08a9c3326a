"""One prepared GPU check, and the estimate that sized the ``colab`` preset.

``python -m dcl_teach.gpu_check --out gpu-check.json`` runs, on a machine with CUDA, in at most
about 8 minutes:

1. the CUDA tests (``pytest -m gpu``: the tests marked ``gpu``, which skip without CUDA);
2. the loss benchmark on CUDA (``python -m dcl_teach.bench loss --device cuda ...``);
3. two epochs of the ``colab`` preset through the command line, on CIFAR-10 if it is in the
   data folder, else on a fake archive in the real binary format and at the real size
   (50,000 + 10,000 random images, ``tests/fake_cifar10.py``), so the images/s
   it measures are those of a real epoch.

Each step runs in its own process with its own time limit; the JSON names the GPU and gives
each step's status, time and output tail, and the measured training images/s next to the
estimate. Without CUDA it says so and exits with status 2, writing no file: a report that
looks like a GPU check but measured nothing would mislead.

``python -m dcl_teach.gpu_check --estimate`` prints the sizing estimate of ``docs/gpu.md``
(FLOPs counted on the CPU, throughput assumed; needs no GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

import dcl_teach
from dcl_teach.atomic import atomic_write
from dcl_teach.config import TrainConfig
from dcl_teach.data import CIFAR10_ARCHIVE, CIFAR10_DIR, data_dir, load_dataset
from dcl_teach.models import build_model

# Published peak throughput of an NVIDIA T4 (dense, boost clock).
T4_PEAK_TFLOPS = {"fp16_tensor_cores": 65.0, "fp32": 8.1}
# Assumptions of the estimate, to be replaced by what the GPU check measures on a T4:
ASSUMED_FRACTION_OF_PEAK = 0.10  # of the fp16 tensor-core peak, for 32x32 images (see docs)
ASSUMED_STEP_OVERHEAD_S = 0.015  # per step: Python, kernel launches, host-device syncs
CIFAR10_TRAIN, CIFAR10_EVAL = 50_000, 60_000  # images per epoch; per kNN evaluation
BUDGET_MINUTES = {"run": 5.0, "grid": 45.0}
GRID = {"losses": ("infonce", "dcl"), "batch_sizes": (128, 256, 512)}
CHECK_EPOCHS = 2
TIMEOUTS_S = {"cuda_tests": 100, "loss_bench": 120, "colab_epochs": 200}  # < 8 min in all


def forward_flops(config: TrainConfig) -> int:
    """FLOPs of one forward pass of one image through the model ``config`` trains.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` on a zero image (2 FLOPs per
    multiply-add, convolutions and matrix products only), in eval mode.

    Example:
        >>> round(forward_flops(TrainConfig.preset("cifar10")) / 1e9, 2)  # ResNet-18 + head
        1.11
    """
    from torch.utils.flop_counter import FlopCounterMode

    channels, size = (1, 8) if config.dataset == "digits" else (3, 32)
    model = build_model(
        config.dataset,
        feature_dim=config.feature_dim,
        proj_dim=config.proj_dim,
        norm=config.norm,
        width=config.width,
    ).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, channels, size, size))
    return counter.get_total_flops()


def estimate_minutes(
    config: TrainConfig,
    *,
    tflops: float | None = None,
    step_overhead_s: float = ASSUMED_STEP_OVERHEAD_S,
) -> float:
    """Estimated minutes of one CIFAR-10 run of ``config`` on a GPU delivering ``tflops``.

    Training costs 3 forward passes per image and view (forward, and a backward twice as
    dear), 2 views per image; each kNN evaluation one forward pass over the 50,000 + 10,000
    images. Every step adds ``step_overhead_s``.

    Args:
        config: the run (its epochs, batch size, width and eval_every).
        tflops: sustained throughput; None: the assumed fraction of a T4's fp16 peak.
        step_overhead_s: fixed cost of a step beyond its FLOPs.

    Example:
        >>> round(estimate_minutes(TrainConfig.preset("colab", batch_size=128)), 1)
        3.3
    """
    rate = 1e12 * (tflops or ASSUMED_FRACTION_OF_PEAK * T4_PEAK_TFLOPS["fp16_tensor_cores"])
    f = forward_flops(config)
    steps = CIFAR10_TRAIN // config.batch_size
    per_step = config.batch_size * 2 * 3 * f / rate + step_overhead_s
    evals = sum(
        1 for e in range(1, config.epochs + 1) if e % config.eval_every == 0 or e == config.epochs
    )
    return (config.epochs * steps * per_step + evals * CIFAR10_EVAL * f / rate) / 60


def sizing_table(config: TrainConfig | None = None) -> dict[str, Any]:
    """The estimate behind the ``colab`` preset, as a JSON-ready dict (see ``docs/gpu.md``)."""
    config = config or TrainConfig.preset("colab")
    base = ASSUMED_FRACTION_OF_PEAK * T4_PEAK_TFLOPS["fp16_tensor_cores"]
    cases = {
        "assumed": (base, ASSUMED_STEP_OVERHEAD_S),
        "pessimistic (half the rate, twice the overhead)": (base / 2, 2 * ASSUMED_STEP_OVERHEAD_S),
    }
    f = forward_flops(config)
    table: dict[str, Any] = {
        "forward_gflops_per_image": f / 1e9,
        "train_gflops_per_image": 6 * f / 1e9,  # 2 views x (forward + backward = 3 forwards)
        "standard_resnet18_forward_gflops": forward_flops(TrainConfig.preset("cifar10")) / 1e9,
        "assumed_tflops": base,
        "t4_peak_tflops": T4_PEAK_TFLOPS,
        "assumed_step_overhead_s": ASSUMED_STEP_OVERHEAD_S,
        "cases": {},
    }
    for name, (tflops, overhead) in cases.items():
        minutes = {
            bs: estimate_minutes(
                dataclasses.replace(config, batch_size=bs), tflops=tflops, step_overhead_s=overhead
            )
            for bs in GRID["batch_sizes"]
        }
        table["cases"][name] = {
            "images_per_s_training": tflops * 1e12 / (6 * f),
            "minutes_per_run": minutes,
            "minutes_grid": len(GRID["losses"]) * sum(minutes.values()),
        }
    return table


def format_sizing(table: dict[str, Any]) -> str:
    """The sizing table as the lines that ``docs/gpu.md`` quotes."""
    lines = [
        f"forward pass: {table['forward_gflops_per_image']:.3f} GFLOP per image "
        f"(standard ResNet-18: {table['standard_resnet18_forward_gflops']:.3f})",
        f"training: {table['train_gflops_per_image']:.3f} GFLOP per image (2 views x 3 passes)",
    ]
    for name, case in table["cases"].items():
        runs = ", ".join(f"B={bs}: {m:.1f} min" for bs, m in case["minutes_per_run"].items())
        lines.append(
            f"{name}: {case['images_per_s_training']:,.0f} images/s; {runs}; "
            f"grid of {len(GRID['losses'])} losses x 3 batches: "
            f"{case['minutes_grid']:.0f} min"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------ the check


def run_step(name: str, cmd: Sequence[str], *, timeout: float, cwd: Path) -> dict[str, Any]:
    """Run one step in its own process; its status, return code, seconds and output tail."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
        status = {0: "passed", 5: "no tests"}.get(proc.returncode, "failed")
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:  # its output so far may come back as bytes
        status, code = "timeout", None
        parts = [e.stdout, e.stderr]
        output = "".join(
            x.decode(errors="replace") if isinstance(x, bytes) else x or "" for x in parts
        )
    return {
        "name": name,
        "command": " ".join(cmd),
        "status": status,
        "returncode": code,
        "seconds": round(time.perf_counter() - start, 1),
        "output_tail": output[-3000:],
    }


def prepare_cifar10(work: Path, *, records_per_batch: int = 10_000) -> tuple[str | None, str]:
    """The data root for the colab epochs and what it holds.

    CIFAR-10 in the usual data folder if it is there; otherwise a fake archive in the real
    format is written and extracted under ``work`` (random pixels: the kNN accuracy is chance,
    the speed is that of a real epoch).
    """
    folder = data_dir(None)
    if (folder / CIFAR10_DIR).is_dir() or (folder / CIFAR10_ARCHIVE).is_file():
        return None, f"real CIFAR-10 from {folder}"
    try:  # the GPU check runs the repository's tests, so it runs from a checkout of it
        from tests.fake_cifar10 import write_fake_cifar10
    except ImportError as e:
        raise SystemExit(
            "no CIFAR-10 in the data folder, and tests/fake_cifar10.py is not importable: run "
            "the GPU check from the repository's root folder"
        ) from e
    archive = write_fake_cifar10(work / "fake-cifar10.tar.gz", records_per_batch=records_per_batch)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = work / "data"
    load_dataset(
        "cifar10", root=root, url=archive.as_uri(), md5=md5, records_per_batch=records_per_batch
    )  # verifies and extracts
    n = 5 * records_per_batch
    return str(root), f"fake CIFAR-10 in the real format ({n} + {records_per_batch} random images)"


def colab_result(out_dir: Path, data: str) -> dict[str, Any]:
    """What the colab epochs measured, read from their ``history.json``."""
    path = out_dir / "history.json"
    if not path.is_file():
        return {"data": data, "history": None}
    history = json.loads(path.read_text())
    records = history["records"]
    ips = [r["images_per_s"] for r in records]
    config = TrainConfig.preset("colab")
    result = {
        "data": data,
        "device_name": history["meta"].get("device_name"),
        "images_per_s": ips,
        "epoch_time_s": [r["epoch_time_s"] for r in records],
        "wall_time_s": history["meta"].get("wall_time_s"),
        "loss": [r["loss"] for r in records],
        "knn_acc": [r["knn_acc"] for r in records],
        "estimated_t4_images_per_s": sizing_table(config)["cases"]["assumed"][
            "images_per_s_training"
        ],
    }
    if ips:  # the last epoch: cuDNN's algorithm search and warm-up fall in the first
        train_min = config.epochs * CIFAR10_TRAIN / ips[-1] / 60
        result["colab_run_training_minutes_on_this_gpu"] = train_min
    return result


def run_check(
    work: Path,
    *,
    gpu: dict[str, Any],
    step: Callable[..., dict[str, Any]] = run_step,
    records_per_batch: int = 10_000,
) -> dict[str, Any]:
    """Run the three steps and return the report (``step`` runs one; tests pass a stub)."""
    root = Path(__file__).resolve().parents[1]
    py = sys.executable
    steps = []
    if (root / "tests").is_dir():
        steps.append(
            step(
                "cuda_tests",
                [
                    py,
                    "-m",
                    "pytest",
                    "-m",
                    "gpu",
                    "-n",
                    "0",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    "tests",
                ],
                timeout=TIMEOUTS_S["cuda_tests"],
                cwd=root,
            )
        )
    bench_json = work / "bench-loss-cuda.json"
    steps.append(
        step(
            "loss_bench",
            [
                py,
                "-m",
                "dcl_teach.bench",
                "loss",
                "--device",
                "cuda",
                "--sizes",
                "1024",
                "4096",
                "--repeats",
                "3",
                "--json",
                str(bench_json),
            ],
            timeout=TIMEOUTS_S["loss_bench"],
            cwd=root,
        )
    )
    start = time.perf_counter()
    data_root, data = prepare_cifar10(work, records_per_batch=records_per_batch)
    data_seconds = round(time.perf_counter() - start, 1)
    out = work / "colab"
    cmd = [
        py,
        "-m",
        "dcl_teach",
        "train",
        "--preset",
        "colab",
        "--epochs",
        str(CHECK_EPOCHS),
        "--out",
        str(out),
        "--fresh",
        "--no-baselines",
        "--no-progress",
        "--no-download",
    ]
    if data_root is not None:
        cmd += ["--data-root", data_root]
    steps.append(step("colab_epochs", cmd, timeout=TIMEOUTS_S["colab_epochs"], cwd=root))
    steps[-1]["data_seconds"] = data_seconds
    report = {
        "gpu": gpu,
        "dcl_teach": dcl_teach.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "steps": steps,
        "colab": colab_result(out, data),
        "loss_bench": json.loads(bench_json.read_text()) if bench_json.is_file() else None,
        "all_passed": all(s["status"] == "passed" for s in steps),
    }
    return report


def gpu_info() -> dict[str, Any]:
    """Name, memory, compute capability and CUDA version of the current GPU."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write the report as indented JSON, atomically."""
    atomic_write(path, json.dumps(report, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dcl_teach.gpu_check``; returns 0 (all passed), 1 (a step failed), 2 (no CUDA)."""
    p = argparse.ArgumentParser(
        prog="python -m dcl_teach.gpu_check", description=__doc__.split("\n")[0]
    )
    p.add_argument("--out", default="gpu-check.json", help="report file (default: %(default)s)")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="print the sizing estimate of the colab preset (no GPU needed)",
    )
    args = p.parse_args(argv)
    if args.estimate:
        print(format_sizing(sizing_table()))
        return 0
    if not torch.cuda.is_available():
        print(
            "gpu_check: CUDA is not available here, so nothing can be measured; no report "
            f"was written to {args.out}. Run it on a machine with an NVIDIA GPU (on Colab: "
            "Runtime > Change runtime type > T4 GPU).",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        report = run_check(Path(work), gpu=gpu_info())
    write_report(args.out, report)
    for s in report["steps"]:
        print(f"{s['name']:>13}: {s['status']:<8} {s['seconds']:6.1f} s")
    ips = report["colab"].get("images_per_s")
    if ips:
        print(f"colab preset on {report['gpu']['name']}: {ips[-1]:,.0f} images/s (last epoch)")
    print(f"wrote {args.out}")
    return 0 if report["all_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
