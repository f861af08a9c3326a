"""Training-pipeline throughput: device-batched augmentation vs a per-sample DataLoader.

``python -m dcl_teach.bench train --dataset cifar10 --batch-size 256 --steps 20`` (or
``python -m dcl_teach.bench_train ...``) times, in one run and on the same recipe:

(a) ``batched``: the dataset as one uint8 tensor on the device; each step indexes a random
    batch and makes two views with :func:`dcl_teach.augment.two_views` (one vectorised pass);
(b) ``per-sample``: the conventional pipeline, a ``torch.utils.data.Dataset`` whose
    ``__getitem__`` augments ONE image twice with torch ops (integer crop by slicing,
    ``F.interpolate``, ``torch.flip``, the same colour-jitter functions on a batch of one,
    grayscale, normalisation), batched by a ``DataLoader`` with ``num_workers`` 0 and 2 (by
    default; ``--workers``), then moved to the device;
(c) if :mod:`dcl_teach.models` and :mod:`dcl_teach.losses` import, full training steps
    (pipeline + forward/backward of the encoder and head on both views + DCL loss + SGD) for
    each pipeline.

Throughput counts *images* per second; every image yields two views in both pipelines.
Batches are drawn with replacement, so the run length does not depend on the dataset size.
CIFAR-10 falls back to synthetic uint8 images of the same shape when the data are not on
disk (the cost of augmentation does not depend on pixel values); the report says so.

Taught in notebook 06.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

from dcl_teach.atomic import atomic_write
from dcl_teach.augment import (
    Recipe,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    recipe_for,
    rgb_to_grayscale,
    sample_params,
    two_views,
)
from dcl_teach.data import DATASETS, load_dataset, standardize
from dcl_teach.losses import dcl
from dcl_teach.models import build_model
from dcl_teach.provenance import machine_info

_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
_PARAM_NAMES = ("brightness", "contrast", "saturation", "hue")

StepFn = Callable[[torch.Tensor, torch.Tensor], None]


def augment_one(image: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """One SimCLR augmentation of ONE uint8 image ``(C, H, W)``, the per-sample way.

    Draws from the global torch generator, which ``DataLoader`` seeds differently in every
    worker. Crop boxes are rounded to whole pixels, as torchvision does.

    Args:
        image: ``uint8 (C, H, W)``.
        recipe: the :class:`~dcl_teach.augment.Recipe`.

    Returns:
        ``float32 (C, size, size)``, normalised.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> augment_one(torch.zeros(3, 32, 32, dtype=torch.uint8), Recipe()).shape
        torch.Size([3, 32, 32])
    """
    c, height, width = image.shape
    p = sample_params(1, recipe, generator=torch.default_generator)
    x0, y0, w, h = p["crop"][0].tolist()
    cw, ch = max(1, round(w * width)), max(1, round(h * height))
    left, top = min(round(x0 * width), width - cw), min(round(y0 * height), height - ch)
    crop = image[:, top : top + ch, left : left + cw].float() / 255.0  # (C, ch, cw)
    x = F.interpolate(
        crop[None], size=(recipe.size, recipe.size), mode="bilinear", align_corners=False
    )  # (1, C, S, S)
    if p["flip"].item():
        x = x.flip(-1)
    if p["jitter"].item():
        strengths = (recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
        for k in p["order"][0].tolist():
            if strengths[k] > 0:
                x = _OPS[k](x, p[_PARAM_NAMES[k]])  # (1, C, S, S)
    if c == 3 and p["gray"].item():
        x = rgb_to_grayscale(x).expand_as(x)
    return standardize(x, recipe.mean, recipe.std)[0]  # (C, S, S)


class PerSampleViews(Dataset):
    """A conventional contrastive dataset: ``__getitem__`` returns two views of one image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> None:
        self.images, self.labels, self.recipe = images, labels, recipe

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.images[i]  # (C, H, W) uint8
        return augment_one(image, self.recipe), augment_one(image, self.recipe), self.labels[i]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batched(
    images: torch.Tensor,
    recipe: Recipe,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    seed: int = 0,
    step_fn: StepFn | None = None,
) -> float:
    """Seconds for ``steps`` batches of two views made on the images' device (after warm-up)."""
    device = images.device
    g = torch.Generator(device=device).manual_seed(seed)
    n = images.shape[0]
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        idx = torch.randint(n, (batch_size,), generator=g, device=device)  # (B,)
        v1, v2 = two_views(images[idx], recipe, generator=g)  # (B, C, S, S) each
        if step_fn is not None:
            step_fn(v1, v2)
    _sync(device)
    return time.perf_counter() - start


def time_per_sample(
    images: torch.Tensor,
    labels: torch.Tensor,
    recipe: Recipe,
    *,
    batch_size: int,
    steps: int,
    warmup: int,
    workers: int,
    device: torch.device,
    seed: int = 0,
    step_fn: StepFn | None = None,
) -> float:
    """Seconds for ``steps`` DataLoader batches of per-sample views moved to ``device``."""
    dataset = PerSampleViews(images.cpu(), labels.cpu(), recipe)
    sampler = RandomSampler(
        dataset,
        replacement=True,
        num_samples=batch_size * (warmup + steps),
        generator=torch.Generator().manual_seed(seed),
    )
    torch.manual_seed(seed)  # per-sample draws (workers get seed-derived seeds)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    for step, (v1, v2, _) in enumerate(loader):
        if step == warmup:
            _sync(device)
            start = time.perf_counter()
        v1 = v1.to(device, non_blocking=True)  # (B, C, S, S)
        v2 = v2.to(device, non_blocking=True)  # (B, C, S, S)
        if step_fn is not None:
            step_fn(v1, v2)
    _sync(device)
    return time.perf_counter() - start


def _train_step_fn(dataset: str, device: torch.device, feature_dim: int | None) -> StepFn:
    torch.manual_seed(0)
    model = build_model(dataset, feature_dim=feature_dim).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(v1: torch.Tensor, v2: torch.Tensor) -> None:
        z1, z2 = model(torch.cat([v1, v2])).chunk(2)  # (B, D) each
        loss = dcl(z1, z2, tau=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _images_for(
    name: str, root: str | None, synthetic: bool
) -> tuple[torch.Tensor, torch.Tensor, str]:
    if not synthetic:
        try:
            ds = load_dataset(name, split="train", root=root, download=False)
            return ds.images, ds.labels, "real"
        except FileNotFoundError:
            pass
    g = torch.Generator().manual_seed(0)
    shape = (50_000, 3, 32, 32) if name == "cifar10" else (1437, 1, 8, 8)
    images = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, shape[:1], generator=g)
    return images, labels, "synthetic (uint8 noise of the real shape; data not on disk)"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m dcl_teach.bench train",
        description="Throughput of device-batched vs per-sample SimCLR augmentation.",
    )
    p.add_argument("--dataset", choices=DATASETS, default="cifar10")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=20, help="timed batches per pipeline")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", choices=("cpu", "cuda"), default=default_device)
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values, comma list")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps; 0 skips")
    p.add_argument("--feature-dim", type=int, default=None, help="encoder width (model default)")
    p.add_argument("--root", default=None, help="data folder (see dcl_teach.data.data_dir)")
    p.add_argument("--synthetic", action="store_true", help="use synthetic images anyway")
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (torch's default)"
    )
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be >= 1; got {a.threads}")
    if a.batch_size < 1 or a.steps < 1 or a.warmup < 0 or a.train_steps < 0:
        p.error("--batch-size and --steps must be >= 1, --warmup and --train-steps >= 0")
    try:
        a.workers = [int(w) for w in a.workers.split(",")]
    except ValueError:
        p.error(f"--workers must be a comma list of integers; got {a.workers!r}")
    return a


def _row(pipeline: str, workers: int | None, seconds: float, images: int) -> dict[str, object]:
    return {
        "pipeline": pipeline,
        "workers": workers,
        "seconds": seconds,
        "images": images,
        "images_per_s": images / seconds,
        "views_per_s": 2 * images / seconds,
    }


def _print_table(title: str, rows: list[dict[str, object]]) -> None:
    base = rows[0]["images_per_s"]
    print(f"\n{title}")
    print(f"{'pipeline':<12}{'workers':>8}{'images/s':>12}{'views/s':>12}{'batched x':>11}")
    for r in rows:
        w = "-" if r["workers"] is None else r["workers"]
        ratio = base / r["images_per_s"]
        print(
            f"{r['pipeline']:<12}{w:>8}{r['images_per_s']:>12.0f}{r['views_per_s']:>12.0f}"
            f"{ratio:>10.1f}x"
        )


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print a table, optionally write JSON; return the report.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).

    Returns:
        The report: config, machine, data source, ``augment`` rows and ratios, ``train`` rows
        (or ``train_skipped``).
    """
    a = _parse(argv)
    if a.threads is not None:
        torch.set_num_threads(a.threads)  # a busy machine makes extra threads wait on each other
    device = torch.device(a.device)
    recipe = recipe_for(a.dataset)
    images, labels, source = _images_for(a.dataset, a.root, a.synthetic)
    report: dict[str, object] = {
        "benchmark": "train-pipeline",
        "config": {
            k: getattr(a, k)
            for k in ("dataset", "batch_size", "steps", "warmup", "workers", "train_steps")
        },
        "recipe": {k: v for k, v in vars(recipe).items()},
        "data": source,
        "image_shape": list(images.shape[1:]),
        "machine": machine_info(device),
        "notes": (
            "images/s counts source images; each yields two views. batched = "
            "dcl_teach.augment.two_views on the device with torch's intra-op threads; "
            "per-sample = Dataset.__getitem__ augmenting one image + DataLoader "
            "(workers=0: main process; workers=N: N processes with 1 thread each)."
        ),
    }
    print(
        f"dataset {a.dataset} ({source}), batch {a.batch_size}, device {device}, "
        f"{torch.get_num_threads()} torch threads, load {report['machine']['load_average_1min']}"
    )
    common = {"batch_size": a.batch_size, "warmup": a.warmup}
    on_device = images.to(device)
    n_img = a.batch_size * a.steps
    rows = [_row("batched", None, time_batched(on_device, recipe, steps=a.steps, **common), n_img)]
    for w in a.workers:
        t = time_per_sample(
            images, labels, recipe, steps=a.steps, workers=w, device=device, **common
        )
        rows.append(_row("per-sample", w, t, n_img))
    report["augment"] = rows
    report["augment_ratios"] = {
        f"batched_over_per_sample_workers_{r['workers']}": rows[0]["images_per_s"]
        / r["images_per_s"]
        for r in rows[1:]
    }
    _print_table("augmentation only (two views per image)", rows)

    if a.train_steps:
        step_fn = _train_step_fn(a.dataset, device, a.feature_dim)
        n_img = a.batch_size * a.train_steps
        kw = {**common, "steps": a.train_steps, "step_fn": step_fn}
        train = [_row("batched", None, time_batched(on_device, recipe, **kw), n_img)]
        for w in a.workers:
            t = time_per_sample(images, labels, recipe, workers=w, device=device, **kw)
            train.append(_row("per-sample", w, t, n_img))
        report["train"] = train
        report["train_model"] = {"feature_dim": a.feature_dim, "loss": "dcl, tau=0.1"}
        _print_table("full training steps (augment + forward/backward + SGD)", train)
    else:
        report["train_skipped"] = "--train-steps 0"

    if hasattr(os, "getloadavg"):
        report["machine"]["load_average_1min_end"] = os.getloadavg()[0]  # other work running?
    if a.json:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(report, indent=2, default=str) + "\n")
        print(f"\nwrote {path}")
    return report


if __name__ == "__main__":
    main()
