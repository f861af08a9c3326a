"""Tests for dcl_teach.grid: a grid of runs, its summary rows and the comparison figure."""

from __future__ import annotations

import dataclasses

import pytest

from dcl_teach.config import TrainConfig
from dcl_teach.grid import plot_comparison, run_grid, summarize

TINY = TrainConfig(
    feature_dim=32, proj_dim=16, batch_size=64, epochs=2, warmup_epochs=0.5, progress=False
)


def test_run_grid_and_summary(tmp_path):
    base = dataclasses.replace(TINY, epochs=1, max_steps=3)
    hs = run_grid(base, losses=["infonce", "dcl"], batch_sizes=[32, 64], out_dir=tmp_path)
    assert [(h.config["batch_size"], h.config["loss"]) for h in hs] == [
        (32, "infonce"),
        (32, "dcl"),
        (64, "infonce"),
        (64, "dcl"),
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dcl_bs32",
        "dcl_bs64",
        "infonce_bs32",
        "infonce_bs64",
    ]
    rows = summarize(hs)
    assert [r["knn_acc"] for r in rows] == [h.final_knn for h in hs]
    with pytest.raises(ValueError, match="loss"):
        run_grid(base, losses=["dcl", "bad"], batch_sizes=[32])


def test_comparison_figure_has_one_line_per_run():
    base = dataclasses.replace(TINY, epochs=1, max_steps=2)
    hs = run_grid(base, losses=["dcl"], batch_sizes=[32, 64])
    fig = plot_comparison(hs)
    ax_bs, ax_acc, ax_q = fig.axes
    assert len(ax_bs.lines) == 1 and len(ax_acc.lines) == 2 and len(ax_q.lines) == 2
    assert list(ax_bs.lines[0].get_xdata()) == [32, 64]
