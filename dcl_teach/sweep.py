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

import csv
import dataclasses
import io
import json
import math
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
from dcl_teach.config import TrainConfig
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
from dcl_teach.train import train

ARMS = ("infonce", "dcl", "dclw", "infonce_lrq", "infonce_steps", "dcl_steps")
METRICS = ("knn_few", "probe_few", "knn_all", "probe_all")
METRIC_NAMES = {
    "knn_few": "few-label kNN",
    "probe_few": "few-label linear probe",
    "knn_all": "kNN, all labels",
    "probe_all": "linear probe, all labels",
}
# (arm, reference arm): the same-seed differences the summary reports.
GAPS = (
    ("dcl", "infonce"),
    ("dclw", "infonce"),
    ("dcl", "infonce_lrq"),
    ("infonce_lrq", "infonce"),
    ("dcl_steps", "infonce_steps"),
)
RESULT_NAME = "result.json"


@dataclass(frozen=True)
class SweepConfig:
    """The grid and the evaluation protocol of a sweep.

    Example:
        >>> SweepConfig(batch_sizes=(8, 256), seeds=(0,)).arms
        ('infonce', 'dcl', 'dclw', 'infonce_lrq', 'infonce_steps', 'dcl_steps')
    """

    base: TrainConfig = TrainConfig(epochs=30, progress=False)  # shared settings of every run
    batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 256)
    seeds: tuple[int, ...] = (0, 1, 2)
    arms: tuple[str, ...] = ARMS
    match_steps_of: int = 32  # the *_steps arms get as many steps as this batch size
    steps_batch_sizes: tuple[int, ...] = (64, 256)  # where the *_steps arms run
    few_labels: int = 5  # labelled images per class in the few-label protocols
    few_draws: int = 20  # random label draws averaged over
    few_k: int = 10  # kNN neighbours in the few-label protocol (<= the labelled bank)
    eval_seed: int = 1234  # seeds the label draws: the same draws for every run
    keep_checkpoints: bool = False  # a finished run's checkpoint is deleted to save space

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
    return {"raw_pixels": pixels, "untrained_encoder": _mean_sd(untrained)}


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
        "gpu": machine.get("gpu"),
        "aten_cpu_capability": os.environ.get("ATEN_CPU_CAPABILITY", "native"),
        "command": command if command is not None else " ".join(sys.argv),
        "wall_time_s": wall_time_s,
    }


def _config_dict(config: SweepConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["base"] = dataclasses.asdict(config.base)
    return d


# ---------------------------------------------------------------------------- summaries


def _mean_sd(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    out = {}
    for key in METRICS:
        values = [r[key] for r in rows]
        out[key] = statistics.fmean(values)
        out[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def summarize_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sd over seeds of every metric, q_B and wall time, per (arm, batch size).

    Example:
        >>> runs = [{"arm": "dcl", "batch_size": 8, "q_b_mean": q, "wall_time_s": 1.0,
        ...          **{m: a for m in METRICS}} for q, a in ((0.2, 0.8), (0.4, 0.9))]
        >>> row = summarize_runs(runs)[0]
        >>> row["n"], round(row["knn_few"], 3), round(row["knn_few_sd"], 4), round(row["q_b_mean"], 2)
        (2, 0.85, 0.0707, 0.3)
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["arm"], r["batch_size"]), []).append(r)
    rows = []
    for (arm, bs), members in groups.items():
        row = {"arm": arm, "batch_size": bs, "n": len(members), **_mean_sd(members)}
        row["q_b_mean"] = statistics.fmean(m["q_b_mean"] for m in members)
        row["wall_time_s"] = statistics.fmean(m["wall_time_s"] for m in members)
        rows.append(row)
    return rows


def t_quantile(df: int, p: float = 0.975) -> float:
    """Student's t quantile (scipy, which scikit-learn brings)."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_gaps(
    runs: Sequence[dict[str, Any]], metric: str = "knn_few", pairs=GAPS
) -> list[dict[str, Any]]:
    """Same-seed differences ``arm - reference`` per batch size, with a 95 % t interval.

    A gap is *decided* when its interval excludes zero: with 3 seeds that needs the mean
    difference to exceed about 2.5 times the sd of the differences.

    Example:
        >>> runs = [{"arm": a, "batch_size": 8, "seed": s, "knn_few": v}
        ...         for a, vs in (("dcl", (0.90, 0.91, 0.92)), ("infonce", (0.85, 0.85, 0.86)))
        ...         for s, v in enumerate(vs)]
        >>> g = paired_gaps(runs, pairs=(("dcl", "infonce"),))[0]
        >>> round(g["mean"], 4), g["n"], g["decided"]
        (0.0567, 3, True)
    """
    value = {(r["arm"], r["batch_size"], r["seed"]): r[metric] for r in runs}
    sizes = sorted({r["batch_size"] for r in runs})
    out = []
    for arm, ref in pairs:
        for bs in sizes:
            seeds = sorted(
                s for (a, b, s) in value if a == arm and b == bs and (ref, bs, s) in value
            )
            diffs = [value[arm, bs, s] - value[ref, bs, s] for s in seeds]
            if not diffs:
                continue
            mean = statistics.fmean(diffs)
            row = {
                "arm": arm,
                "reference": ref,
                "batch_size": bs,
                "metric": metric,
                "n": len(diffs),
                "diffs": diffs,
                "mean": mean,
                "sd": None,
                "ci_low": None,
                "ci_high": None,
                "decided": False,
            }
            if len(diffs) > 1:  # one seed has no spread: no interval, nothing decided
                sd = statistics.stdev(diffs)
                half = t_quantile(len(diffs) - 1) * sd / math.sqrt(len(diffs))
                row.update(
                    sd=sd,
                    ci_low=mean - half,
                    ci_high=mean + half,
                    decided=bool(mean - half > 0 or mean + half < 0),
                )
            out.append(row)
    return out


def write_results(results: dict[str, Any], out_dir: str | os.PathLike) -> None:
    """``results.json`` (everything), ``results.csv`` (a row per run), ``summary.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, allow_nan=False)  # strict JSON, readable anywhere
    atomic_write(out / "results.json", text + "\n")
    for name, rows in (("results.csv", results["runs"]), ("summary.csv", results["summary"])):
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write(out / name, buffer.getvalue())


COMMITTED_RESULTS = "results/digits-sweep"  # the sweep shipped with the repository


def find_results(relative: str = COMMITTED_RESULTS) -> Path:
    """The folder ``relative`` in the working directory or the nearest folder above it.

    Notebooks run in ``notebooks/``, scripts in the repository root: both find the committed
    results. Without a clone (e.g. on Colab) the returned path does not exist, and
    :func:`load_results` downloads the file there.
    """
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / relative).exists():
            return folder / relative
    return here / relative


def load_results(
    path: str | os.PathLike, *, url: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """Read a sweep's ``results.json`` (or the folder holding it); download it first if asked.

    Args:
        path: ``results.json`` or its folder.
        url: where to fetch the file when it is missing (e.g.
            ``dcl_teach.colab.raw_url("results/digits-sweep/results.json")``); the download is
            written atomically and checked to be a sweep's results before it is kept.
        timeout: seconds to wait for the server.

    Raises:
        FileNotFoundError: no results there (and no ``url``); the message says how to get them.
        ConnectionError: the download failed (no network, wrong address).
        ValueError: the file is not a sweep's results.
    """
    path = Path(path)
    file = path / "results.json" if path.suffix != ".json" else path
    if not file.exists() and url is not None:
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                payload = response.read()
        except OSError as e:
            raise ConnectionError(
                f"could not download the sweep results from {url} ({e}); clone the "
                f"repository, or produce them with `python -m dcl_teach sweep --out {file.parent}`"
            ) from e
        _check_results(json.loads(payload), url)
        file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(file, payload)
    if not file.exists():
        raise FileNotFoundError(
            f"no sweep results at {file}: clone the repository (they are committed under "
            f"{COMMITTED_RESULTS}/) or produce them with `python -m dcl_teach sweep --out "
            f"{file.parent}`"
        )
    try:
        results = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e}); delete it and fetch it again") from e
    return _check_results(results, file)


def _check_results(results: Any, source: object) -> dict[str, Any]:
    keys = ("provenance", "config", "baselines", "runs", "summary", "gaps")
    if not isinstance(results, dict) or not all(k in results for k in keys):
        raise ValueError(f"{source} does not hold a sweep's results (expected keys {keys})")
    return results


def format_summary(results: dict[str, Any], metric: str = "knn_few") -> str:
    """A text table: mean +/- sd (in %) per arm and batch size, then the paired gaps."""
    summary = results["summary"]
    sizes = sorted({r["batch_size"] for r in summary})
    arms = list(dict.fromkeys(r["arm"] for r in summary))
    cell = {(r["arm"], r["batch_size"]): r for r in summary}
    lines = [
        f"{METRIC_NAMES[metric]} (%), mean +/- sd over seeds",
        f"{'arm':<14}" + "".join(f"{'B=' + str(b):>14}" for b in sizes),
    ]
    for arm in arms:
        parts = []
        for b in sizes:
            r = cell.get((arm, b))
            parts.append(
                f"{'':>14}"
                if r is None
                else f"{100 * r[metric]:8.1f} +/-{100 * r[metric + '_sd']:4.1f}"
            )
        lines.append(f"{arm:<14}" + "".join(parts))
    lines.append("")
    lines.append("same-seed gaps (points), mean [95 % interval]")
    for g in paired_gaps(results["runs"], metric):
        verdict = "decided" if g["decided"] else "not decided"
        pair = f"{g['arm']} - {g['reference']}"
        interval = (
            "[  1 seed: no interval ]"
            if g["n"] < 2
            else f"[{100 * g['ci_low']:+6.2f}, {100 * g['ci_high']:+6.2f}]"
        )
        lines.append(
            f"{pair:<28} B={g['batch_size']:<4} {100 * g['mean']:+6.2f} {interval}  {verdict}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- reading a sweep

ARM_LABELS = {
    "infonce": "InfoNCE (SimCLR)",
    "dcl": "DCL",
    "dclw": "DCLW",
    "infonce_lrq": "InfoNCE, lr / mean q_B",
    "infonce_steps": "InfoNCE, steps matched",
    "dcl_steps": "DCL, steps matched",
}


def _cells(results: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["arm"], r["batch_size"]): r for r in results["summary"]}


def plot_sweep(results: dict[str, Any], metric: str = "knn_few"):
    """Figure: accuracy vs batch size with error bars, same-seed gaps, and q_B per setting.

    Left: mean +/- sd over seeds of ``metric`` for every main arm, with the raw-pixel and
    untrained-encoder baselines as horizontal lines; the y-axis spans from below the untrained
    encoder to 100 %, so that differences are seen at their true scale. Middle: the same-seed
    differences DCL - InfoNCE and DCL - (InfoNCE with lr / q_B), each seed a dot, the mean
    with its 95 % t interval. Right: the mean q_B over training of each setting.

    Returns:
        A ``matplotlib.figure.Figure`` with three axes (no pyplot state is touched).

    Taught in notebook 06.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4), layout="constrained")
    ax_acc, ax_gap, ax_q = fig.subplots(1, 3)
    cells = _cells(results)
    sizes = sorted({b for (_, b) in cells})
    arms = [a for a in ("infonce", "dcl", "dclw", "infonce_lrq") if (a, sizes[0]) in cells]
    for i, arm in enumerate(arms):
        xs = [b for b in sizes if (arm, b) in cells]
        ys = [100 * cells[arm, b][metric] for b in xs]
        err = [100 * cells[arm, b][f"{metric}_sd"] for b in xs]
        shifted = [x * 1.04 ** (i - 1.5) for x in xs]  # side by side, not on top of each other
        ax_acc.errorbar(shifted, ys, yerr=err, marker="o", capsize=3, label=ARM_LABELS[arm])
        ax_q.plot(xs, [cells[arm, b]["q_b_mean"] for b in xs], "o-", label=ARM_LABELS[arm])
    base = results["baselines"]
    for key, style in (("raw_pixels", ":"), ("untrained_encoder", "--")):
        ax_acc.axhline(100 * base[key][metric], color="gray", ls=style, label=key.replace("_", " "))
    low = min(100 * base["untrained_encoder"][metric], min(100 * r[metric] for r in cells.values()))
    ax_acc.set_ylim(5 * math.floor(low / 5) - 5, 100)
    for j, (arm, ref) in enumerate((("dcl", "infonce"), ("dcl", "infonce_lrq"))):
        gaps = [g for g in paired_gaps(results["runs"], metric, ((arm, ref),))]
        for g in gaps:
            x = g["batch_size"] * 1.06 ** (2 * j - 1)
            ax_gap.scatter(
                [x] * g["n"], [100 * d for d in g["diffs"]], s=12, color=f"C{j}", alpha=0.5
            )
        if gaps:
            xs = [g["batch_size"] * 1.06 ** (2 * j - 1) for g in gaps]
            ys = [100 * g["mean"] for g in gaps]
            lo = [100 * (g["mean"] - g["ci_low"]) for g in gaps]
            ax_gap.errorbar(
                xs,
                ys,
                yerr=lo,
                fmt="s",
                capsize=4,
                color=f"C{j}",
                label=f"{ARM_LABELS[arm]} - {ARM_LABELS[ref]}",
            )
    ax_gap.axhline(0, color="black", lw=0.8)
    name = METRIC_NAMES[metric]
    ax_acc.set(ylabel=f"{name} (%)", title=f"{name}, mean +/- sd over seeds")
    ax_gap.set(ylabel="difference (points)", title="same-seed gaps, mean and 95 % interval")
    ax_q.set(ylabel="mean $q_B$ during training", title="coupling factor $q_B$", ylim=(0, 1))
    for ax in (ax_acc, ax_gap, ax_q):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("batch size B")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="lower left")
    ax_gap.legend(fontsize=7)
    ax_q.legend(fontsize=7)
    return fig


def conclusions(results: dict[str, Any], metric: str = "knn_few") -> list[str]:
    """Sentences that say what the sweep decides and what it does not, computed from the data.

    Example:
        >>> runs = [{"arm": a, "batch_size": 8, "seed": s, "knn_few": v}
        ...         for a, vs in (("dcl", (0.90, 0.91, 0.92)), ("infonce", (0.85, 0.85, 0.86)))
        ...         for s, v in enumerate(vs)]
        >>> print(conclusions({"runs": runs})[0])
        DCL - InfoNCE (SimCLR), B = 8: +5.7 points [95 % interval +4.2, +7.1] over 3 seeds: DCL is better (decided).
    """
    lines = []
    for g in paired_gaps(results["runs"], metric):
        a, r = ARM_LABELS[g["arm"]], ARM_LABELS[g["reference"]]
        head = f"{a} - {r}, B = {g['batch_size']}: {100 * g['mean']:+.1f} points"
        if g["n"] < 2:
            lines.append(f"{head} from 1 seed: no interval, nothing decided.")
            continue
        ci = f"[95 % interval {100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"
        if g["decided"]:
            better = a if g["mean"] > 0 else r
            verdict = f"{better} is better (decided)"
        else:
            verdict = "the data do not decide"
        lines.append(f"{head} {ci} over {g['n']} seeds: {verdict}.")
    return lines
