"""The results of a sweep: summaries with error bars, paired gaps, files, figure and conclusions.

:func:`summarize_runs` gives mean and sample sd over seeds per (arm, batch size);
:func:`paired_gaps` the same-seed differences between arms with Student-t 95 % intervals (a gap
is "decided" only when its interval excludes 0); :func:`write_results` and
:func:`load_results` write and read ``results.json`` (strict JSON, downloaded atomically when
missing); :func:`format_summary`, :func:`plot_sweep` and :func:`conclusions` are what notebook
06 shows. The sweep itself is :mod:`dcl_teach.sweep`.

Taught in notebook 06.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcl_teach.atomic import atomic_write

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


# ---------------------------------------------------------------------------- summaries


def mean_sd(rows: Sequence[dict[str, float]]) -> dict[str, float]:
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
        row = {"arm": arm, "batch_size": bs, "n": len(members), **mean_sd(members)}
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
