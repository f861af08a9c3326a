"""Grids of runs, their one-line summaries and the comparison figure.

``run_grid`` trains every (batch size, loss) pair from one base configuration; ``summarize``
turns the histories into table rows; ``plot_comparison`` draws final kNN accuracy against batch
size and the kNN and q_B curves per epoch.

Taught in notebook 06.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcl_teach.checkpoint import History
from dcl_teach.config import TrainConfig


def run_grid(
    base: TrainConfig,
    *,
    losses: Sequence[str] = ("infonce", "dcl", "dclw"),
    batch_sizes: Sequence[int] = (32, 256),
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> list[History]:
    """Train every (batch size, loss) pair of the grid from the same base configuration.

    Args:
        base: the shared settings (its ``loss``, ``batch_size`` and ``out_dir`` are replaced).
        losses: names from ``LOSSES``.
        batch_sizes: batch sizes to try.
        out_dir: each run writes to ``out_dir/<loss>_bs<batch>`` (None: nothing is written).
        resume: resume runs whose checkpoints exist.

    Returns:
        One :class:`History` per run, batch size major, in the order given.

    Raises:
        ValueError: an empty grid or a bad loss/batch size (before anything trains).

    Taught in notebook 06.
    """
    if not losses or not batch_sizes:
        raise ValueError(f"need at least one loss and one batch size, got {losses}, {batch_sizes}")
    configs = [
        dataclasses.replace(
            base,
            loss=loss,
            batch_size=bs,
            out_dir=None if out_dir is None else str(Path(out_dir) / f"{loss}_bs{bs}"),
        )
        for bs in batch_sizes
        for loss in losses
    ]  # every config is validated here, before the first run starts
    from dcl_teach.train import train  # train.py re-exports this module's functions

    return [train(c, resume=resume) for c in configs]


def summarize(histories: Sequence[History]) -> list[dict[str, Any]]:
    """One row per run: loss, batch size, final and best kNN accuracy, final q_B, wall time.

    Taught in notebook 06.
    """
    rows = []
    for h in histories:
        accs = [a for a in h.column("knn_acc") if a is not None]
        rows.append(
            {
                "loss": h.config["loss"],
                "batch_size": h.config["batch_size"],
                "epochs": len(h.records),
                "knn_acc": h.final_knn,
                "best_knn_acc": max(accs) if accs else None,
                "q_b": h.records[-1]["q_b"] if h.records else None,
                "train_loss": h.records[-1]["loss"] if h.records else None,
                "wall_time_s": h.meta.get("wall_time_s"),
            }
        )
    return rows


def plot_comparison(histories: Sequence[History]):
    """Figure: final kNN accuracy vs batch size per loss, and kNN and q_B curves per epoch.

    Returns:
        A ``matplotlib.figure.Figure`` with three axes (no pyplot state is touched).

    Taught in notebook 06.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_bs, ax_acc, ax_q = fig.subplots(1, 3)
    losses = list(dict.fromkeys(h.config["loss"] for h in histories))
    sizes = sorted({h.config["batch_size"] for h in histories})
    colors = {loss: f"C{i}" for i, loss in enumerate(losses)}
    styles = {bs: ("-", "--", ":", "-.")[i % 4] for i, bs in enumerate(sizes)}
    label = {"infonce": "InfoNCE (SimCLR)", "dcl": "DCL", "dclw": "DCLW"}
    for loss in losses:
        runs = sorted(
            (h for h in histories if h.config["loss"] == loss), key=lambda h: h.config["batch_size"]
        )
        xs = [h.config["batch_size"] for h in runs]
        ys = [100 * (h.final_knn or float("nan")) for h in runs]
        ax_bs.plot(xs, ys, "o-", color=colors[loss], label=label.get(loss, loss))
    for h in histories:
        loss, bs = h.config["loss"], h.config["batch_size"]
        ev = [r for r in h.records if r["knn_acc"] is not None]
        kw = dict(
            color=colors[loss], linestyle=styles[bs], label=f"{label.get(loss, loss)}, B={bs}"
        )
        ax_acc.plot([r["epoch"] for r in ev], [100 * r["knn_acc"] for r in ev], **kw)
        ax_q.plot(h.column("epoch"), h.column("q_b"), **kw)
    ax_bs.set(
        xscale="log",
        xlabel="batch size",
        ylabel="final kNN accuracy (%)",
        title="accuracy vs batch size",
    )
    ax_bs.set_xticks(sizes, [str(s) for s in sizes])
    ax_bs.minorticks_off()
    ax_acc.set(xlabel="epoch", ylabel="kNN accuracy (%)", title="kNN accuracy per epoch")
    ax_q.set(xlabel="epoch", ylabel="mean $q_B$", title="coupling factor $q_B$ per epoch")
    ax_bs.legend(fontsize=8)
    ax_q.legend(fontsize=7)
    for ax in (ax_bs, ax_acc, ax_q):
        ax.grid(alpha=0.3)
    return fig
