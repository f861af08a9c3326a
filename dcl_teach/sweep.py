"""A multi-seed batch-size sweep with controls: does DCL train a better encoder than InfoNCE?

One call of :func:`run_sweep` trains every (arm, batch size, seed) of a grid and evaluates each
encoder with protocols that can see a difference on the digits, where kNN with all labels
saturates (raw pixels alone reach about 95 %):

* **few-label kNN**: ``few_labels`` labelled images per class, ``few_k`` neighbours (never more
  than the labelled bank holds), averaged over ``few_draws`` random label draws; the draws come
  from ``eval_seed``, so every run and every baseline is judged on the same draws;
* **linear probes**: logistic regression on frozen features, with all labels and with the
  few-label draws;
* kNN with all labels, for comparison with notebook 06's monitor.

The arms of the grid:

* ``infonce``, ``dcl``, ``dclw``: the three losses at the same settings;
* ``infonce_lrq`` (the learning-rate control): InfoNCE with its learning rate divided by the
  mean q_B that the same-seed InfoNCE run measured at that batch size. InfoNCE's gradient is
  q_B times DCL's direction (Eq. 2.4), so at one learning rate its steps are smaller; if this
  control closes the gap, the gap was a step-size effect, not the decoupling;
* ``infonce_steps``, ``dcl_steps`` (the step control): a fixed number of epochs gives a batch
  of 8 thirty-two times the steps of a batch of 256. These arms train the larger batch sizes
  for as many steps as ``match_steps_of`` gets in the main grid.

Every run writes ``runs/<name>/history.json`` and ``result.json``; a finished run is skipped
when the sweep is started again, and an interrupted one resumes from its checkpoint. The sweep
writes ``results.json`` (provenance, protocol, baselines, runs, summary and paired gaps),
``results.csv`` and ``summary.csv``::

    python -m dcl_teach sweep --out results/digits-sweep

Taught in notebook 06.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dcl_teach.atomic import atomic_write
from dcl_teach.config import TrainConfig, option
from dcl_teach.data import ImageSet, load_dataset
from dcl_teach.evaluate import (
    embed,
    few_label_indices,
    knn_accuracy,
    linear_probe,
    pixel_features,
)
from dcl_teach.models import build_model
from dcl_teach.provenance import machine_info
from dcl_teach.sweep_results import (
    COMMITTED_RESULTS,
    GAPS,
    METRIC_NAMES,
    METRICS,
    conclusions,
    find_results,
    format_summary,
    load_results,
    mean_sd,
    paired_gaps,
    plot_sweep,
    summarize_runs,
    t_quantile,
    write_results,
)
from dcl_teach.train import train

__all__ = [  # the sweep, and its results half (dcl_teach.sweep_results), importable from here
    "ARMS",
    "COMMITTED_RESULTS",
    "GAPS",
    "METRICS",
    "METRIC_NAMES",
    "RunSpec",
    "SweepConfig",
    "baseline_results",
    "conclusions",
    "evaluate_encoder",
    "evaluate_features",
    "find_results",
    "format_summary",
    "label_draws",
    "load_results",
    "mean_sd",
    "paired_gaps",
    "plan",
    "plot_sweep",
    "run_sweep",
    "summarize_runs",
    "t_quantile",
    "write_results",
]

ARMS = ("infonce", "dcl", "dclw", "infonce_lrq", "infonce_steps", "dcl_steps")
RESULT_NAME = "result.json"


@dataclass(frozen=True)
class SweepConfig:
    """The grid and the evaluation protocol of a sweep.

    Example:
        >>> SweepConfig(batch_sizes=(8, 256), seeds=(0,)).arms
        ('infonce', 'dcl', 'dclw', 'infonce_lrq', 'infonce_steps', 'dcl_steps')
    """

    base: TrainConfig = option(
        TrainConfig(epochs=30, progress=False), "shared settings of every run"
    )
    batch_sizes: tuple[int, ...] = option((8, 16, 32, 64, 256), "batch sizes of the grid")
    seeds: tuple[int, ...] = option((0, 1, 2), "seeds of the grid")
    arms: tuple[str, ...] = option(ARMS, f"arms of the grid, from {list(ARMS)}")
    match_steps_of: int = option(32, "the *_steps arms get as many steps as this batch size")
    steps_batch_sizes: tuple[int, ...] = option((64, 256), "where the *_steps arms run")
    few_labels: int = option(5, "labelled images per class in the few-label protocols")
    few_draws: int = option(20, "random label draws averaged over")
    few_k: int = option(10, "kNN neighbours in the few-label protocol (<= the labelled bank)")
    eval_seed: int = option(1234, "seeds the label draws: the same draws for every run")
    keep_checkpoints: bool = option(
        False, "keep a finished run's checkpoint (else deleted to save space)"
    )

    def __post_init__(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS)}")
        if not self.batch_sizes or not self.seeds or not self.arms:
            raise ValueError("a sweep needs at least one batch size, one seed and one arm")
        if "infonce_lrq" in self.arms and "infonce" not in self.arms:
            raise ValueError("the arm 'infonce_lrq' needs the arm 'infonce' (it reads its q_B)")
        if self.few_k > self.few_labels * 10 or min(self.few_k, self.few_draws) < 1:
            raise ValueError(
                f"few_k must be between 1 and the labelled bank ({self.few_labels} x 10 "
                f"classes) and few_draws >= 1, got few_k={self.few_k}, "
                f"few_draws={self.few_draws}"
            )


@dataclass(frozen=True)
class RunSpec:
    """One training run of the grid: which arm, batch size and seed, with how many epochs."""

    arm: str
    batch_size: int
    seed: int
    epochs: int

    @property
    def name(self) -> str:
        return f"{self.arm}_bs{self.batch_size}_seed{self.seed}"

    @property
    def loss(self) -> str:
        return self.arm.split("_")[0]


def plan(config: SweepConfig, n_train: int) -> list[RunSpec]:
    """The runs of a sweep, in an order where every ``infonce_lrq`` follows its ``infonce``.

    Example:
        >>> [r.name for r in plan(SweepConfig(batch_sizes=(8,), seeds=(0,),
        ...                                   arms=("infonce", "dcl")), 1437)]
        ['infonce_bs8_seed0', 'dcl_bs8_seed0']
    """
    runs = []
    reference_steps = (n_train // config.match_steps_of) * config.base.epochs
    for seed in config.seeds:
        for bs in config.batch_sizes:
            if bs > n_train:
                raise ValueError(f"batch size {bs} exceeds the {n_train} training images")
            for arm in config.arms:
                epochs = config.base.epochs
                if arm.endswith("_steps"):
                    if bs not in config.steps_batch_sizes:
                        continue
                    epochs = max(1, round(reference_steps / (n_train // bs)))
                runs.append(RunSpec(arm, bs, seed, epochs))
    return runs


# ---------------------------------------------------------------------------- evaluation


def label_draws(labels: torch.Tensor, config: SweepConfig) -> list[torch.Tensor]:
    """The few-label banks: ``few_draws`` seeded choices of ``few_labels`` images per class."""
    generator = torch.Generator().manual_seed(config.eval_seed)
    return [
        few_label_indices(labels, per_class=config.few_labels, generator=generator)
        for _ in range(config.few_draws)
    ]


def evaluate_features(
    h_train: torch.Tensor,
    y_train: torch.Tensor,
    h_test: torch.Tensor,
    y_test: torch.Tensor,
    draws: Sequence[torch.Tensor],
    *,
    config: SweepConfig,
) -> dict[str, float]:
    """All four protocols on frozen features: few-label kNN and probe (mean over the draws,
    with the kNN's sd), kNN and linear probe with all labels.

    Example:
        >>> h = torch.eye(4).repeat(5, 1)  # (20, 4): four perfectly separated classes
        >>> y = torch.arange(4).repeat(5)
        >>> cfg = SweepConfig(few_labels=1, few_draws=2, few_k=1)
        >>> draws = label_draws(y, cfg)
        >>> evaluate_features(h, y, h, y, draws, config=cfg)["knn_few"]
        1.0
    """
    classes = int(max(y_train.max(), y_test.max())) + 1
    knn = {"num_classes": classes, "t": config.base.knn_t}
    few_knn = [
        knn_accuracy(h_train[d], y_train[d], h_test, y_test, k=config.few_k, **knn) for d in draws
    ]
    few_probe = [linear_probe(h_train[d], y_train[d], h_test, y_test) for d in draws]
    k_all = min(config.base.knn_k, len(h_train))
    return {
        "knn_few": statistics.fmean(few_knn),
        "knn_few_sd_draws": statistics.stdev(few_knn) if len(few_knn) > 1 else 0.0,
        "probe_few": statistics.fmean(few_probe),
        "knn_all": knn_accuracy(h_train, y_train, h_test, y_test, k=k_all, **knn),
        "probe_all": linear_probe(h_train, y_train, h_test, y_test),
    }


def evaluate_encoder(
    model: torch.nn.Module,
    train_set: ImageSet,
    test_set: ImageSet,
    draws: Sequence[torch.Tensor],
    *,
    config: SweepConfig,
) -> dict[str, float]:
    """:func:`evaluate_features` on a frozen encoder's (unit-norm) features."""
    h_train = embed(model, train_set.images, name=train_set.name)  # (M, F)
    h_test = embed(model, test_set.images, name=test_set.name)  # (Q, F)
    return evaluate_features(
        h_train, train_set.labels, h_test, test_set.labels, draws, config=config
    )


def baseline_results(
    train_set: ImageSet, test_set: ImageSet, draws: Sequence[torch.Tensor], *, config: SweepConfig
) -> dict[str, Any]:
    """The protocols on raw pixels, and on an untrained encoder of every seed of the sweep."""
    name = train_set.name
    pixels = evaluate_features(
        pixel_features(train_set.images, name=name),
        train_set.labels,
        pixel_features(test_set.images, name=name),
        test_set.labels,
        draws,
        config=config,
    )
    untrained = []
    for seed in config.seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the weights every run of this seed starts from
            model = build_model(name, feature_dim=config.base.feature_dim, norm=config.base.norm)
        untrained.append(evaluate_encoder(model, train_set, test_set, draws, config=config))
    return {"raw_pixels": pixels, "untrained_encoder": mean_sd(untrained)}


# ---------------------------------------------------------------------------- the sweep


def run_config(spec: RunSpec, config: SweepConfig, lr: float, out: Path) -> TrainConfig:
    """The :class:`TrainConfig` of one run of the grid."""
    return dataclasses.replace(
        config.base,
        loss=spec.loss,
        batch_size=spec.batch_size,
        seed=spec.seed,
        epochs=spec.epochs,
        lr=lr,
        eval_every=spec.epochs,
        out_dir=str(out / "runs" / spec.name),
    )


def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    *,
    only: Sequence[str] | None = None,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate every run of the grid, skip finished ones, write the results.

    Args:
        config: the grid and the protocol.
        out_dir: the sweep's folder (created).
        only: run only these run names (e.g. ``["dcl_bs64_seed0"]``); the others must have
            finished already or are left out of the results.
        progress: a tqdm bar over the grid.
        command: the command line, for the provenance (default: ``sys.argv``).

    Returns:
        The dict written to ``results.json``.

    Raises:
        ValueError: an unknown run name in ``only``.
    """
    out = Path(out_dir)
    base = config.base
    train_set = load_dataset(base.dataset, split="train", root=base.data_root)
    test_set = load_dataset(base.dataset, split="test", root=base.data_root)
    runs = plan(config, len(train_set))
    if only is not None:
        names = {r.name for r in runs}
        missing = sorted(set(only) - names)
        if missing:
            raise ValueError(f"no runs named {missing} in this grid; e.g. {sorted(names)[:3]}")
    draws = label_draws(train_set.labels, config)
    start = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    bar = tqdm(runs, desc="sweep", unit="run", disable=not progress, dynamic_ncols=True)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        folder = out / "runs" / spec.name
        done = _read_result(folder / RESULT_NAME, spec)
        if done is None and (only is None or spec.name in only):
            done = _train_and_evaluate(spec, config, rows, out, train_set, test_set, draws)
        if done is not None:
            rows[spec.name] = done
    bar.close()
    results = {
        "provenance": provenance(command, time.perf_counter() - start),
        "config": _config_dict(config),
        "baselines": baseline_results(train_set, test_set, draws, config=config),
        "runs": [rows[r.name] for r in runs if r.name in rows],
    }
    # Each run's own wall time; the call's wall time above excludes runs finished earlier.
    results["provenance"]["runs_wall_time_s"] = sum(r["wall_time_s"] for r in results["runs"])
    results["summary"] = summarize_runs(results["runs"])
    results["gaps"] = paired_gaps(results["runs"])
    write_results(results, out)
    return results


def _train_and_evaluate(spec, config, rows, out, train_set, test_set, draws) -> dict[str, Any]:
    lr = config.base.lr
    if spec.arm == "infonce_lrq":
        reference = rows.get(f"infonce_bs{spec.batch_size}_seed{spec.seed}")
        if reference is None:
            raise RuntimeError(f"{spec.name} needs the finished InfoNCE run of its seed first")
        lr = config.base.lr / reference["q_b_mean"]
    run = run_config(spec, config, lr, out)
    history = train(run)
    row = {
        "name": spec.name,
        "arm": spec.arm,
        "loss": spec.loss,
        "batch_size": spec.batch_size,
        "seed": spec.seed,
        "epochs": spec.epochs,
        "steps": history.records[-1]["step"],
        "lr": lr,
        "q_b_mean": statistics.fmean(history.column("q_b")),
        "q_b_final": history.records[-1]["q_b"],
        "train_loss": history.records[-1]["loss"],
        **evaluate_encoder(history.model, train_set, test_set, draws, config=config),
        "wall_time_s": history.meta["wall_time_s"],
    }
    folder = Path(run.out_dir)
    atomic_write(folder / RESULT_NAME, json.dumps(row, indent=2))
    if not config.keep_checkpoints:
        (folder / "checkpoint.pt").unlink(missing_ok=True)
    return row


def _read_result(path: Path, spec: RunSpec) -> dict[str, Any] | None:
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    same = (row.get("arm"), row.get("batch_size"), row.get("seed"), row.get("epochs")) == (
        spec.arm,
        spec.batch_size,
        spec.seed,
        spec.epochs,
    )
    return row if same else None


def provenance(command: str | None, wall_time_s: float) -> dict[str, Any]:
    """Package and torch versions, the CPU (and GPU), threads, the command and the wall time."""
    machine = machine_info("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "dcl_teach_version": machine["dcl_teach"],
        "torch_version": machine["torch"],
        "python_version": machine["python"],
        "cpu": machine["cpu"],
        "cores": machine["cores"],
        "threads": machine["torch_threads"],
        "gpu": machine["device_name"] if machine["device"].startswith("cuda") else None,
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
        "command": command if command is not None else " ".join(sys.argv),
        "wall_time_s": wall_time_s,
    }


def _config_dict(config: SweepConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["base"] = dataclasses.asdict(config.base)
    return d
