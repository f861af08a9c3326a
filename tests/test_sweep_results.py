"""Tests for dcl_teach.sweep_results: summaries, paired gaps, conclusions and the results file."""

from __future__ import annotations

import json
import math

import pytest

from dcl_teach import sweep_results as sr


def _runs(values):
    return [
        {"arm": arm, "batch_size": bs, "seed": s, "knn_few": v}
        for (arm, bs), vs in values.items()
        for s, v in enumerate(vs)
    ]


def test_paired_gaps_pair_by_seed_and_decide_only_beyond_the_spread():
    runs = _runs(
        {
            ("dcl", 8): (0.90, 0.80, 0.70),
            ("infonce", 8): (0.85, 0.75, 0.65),  # differences 0.05 each: no spread at all
            ("dcl", 256): (0.80, 0.90, 0.70),
            ("infonce", 256): (0.82, 0.85, 0.71),  # differences -0.02, +0.05, -0.01
        }
    )
    gaps = {g["batch_size"]: g for g in sr.paired_gaps(runs, pairs=(("dcl", "infonce"),))}
    assert gaps[8]["diffs"] == pytest.approx([0.05] * 3) and gaps[8]["decided"]
    # Unpaired, the seeds' spread (sd 0.1) would swamp a 0.05 gap; paired it does not.
    g = gaps[256]
    assert g["mean"] == pytest.approx(0.02 / 3) and not g["decided"]
    half = 4.302652729911275 * g["sd"] / math.sqrt(3)  # t(0.975, 2)
    assert g["ci_high"] - g["mean"] == pytest.approx(half)
    assert g["ci_low"] < 0 < g["ci_high"]


def test_summaries_are_mean_and_sample_sd_over_seeds():
    runs = [
        {
            "arm": "dcl",
            "batch_size": 8,
            "q_b_mean": 0.5,
            "wall_time_s": 2.0,
            "seed": s,
            **{m: v for m in sr.METRICS},
        }
        for s, v in enumerate((0.7, 0.8, 0.9))
    ]
    (row,) = sr.summarize_runs(runs)
    assert row["n"] == 3 and row["knn_few"] == pytest.approx(0.8)
    assert row["knn_few_sd"] == pytest.approx(0.1)  # sample sd (n - 1)


def test_conclusions_say_when_the_data_do_not_decide():
    runs = _runs({("dcl", 8): (0.9, 0.7), ("infonce", 8): (0.8, 0.8), ("dcl", 16): (0.9,)})
    runs += _runs({("infonce", 16): (0.8,)})
    lines = sr.conclusions({"runs": runs})
    assert lines[0].endswith("over 2 seeds: the data do not decide.")
    assert (
        lines[1]
        == "DCL - InfoNCE (SimCLR), B = 16: +10.0 points from 1 seed: no interval, nothing decided."
    )


def test_load_results_says_how_to_produce_missing_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m dcl_teach sweep"):
        sr.load_results(tmp_path)


def test_missing_results_are_downloaded_atomically_and_checked(tmp_path):
    good = {k: [] for k in ("runs", "summary", "gaps")}
    good.update(provenance={}, config={}, baselines={})
    source = tmp_path / "served.json"
    source.write_text(json.dumps(good))
    dest = tmp_path / "clone" / "results.json"
    assert sr.load_results(dest, url=source.as_uri()) == good
    assert dest.exists() and [p.name for p in dest.parent.iterdir()] == ["results.json"]
    source.write_text(json.dumps({"runs": []}))
    other = tmp_path / "other" / "results.json"
    with pytest.raises(ValueError, match="does not hold a sweep's results"):
        sr.load_results(other, url=source.as_uri())
    assert not other.exists()  # nothing half-checked is kept
    with pytest.raises(ConnectionError, match="could not download the sweep results"):
        sr.load_results(other, url=(tmp_path / "absent.json").as_uri())
    other.parent.mkdir(exist_ok=True)
    other.write_text("{truncated")
    with pytest.raises(ValueError, match="is not valid JSON"):
        sr.load_results(other)


def test_find_results_walks_up_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "results" / "digits-sweep").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert sr.find_results() == tmp_path / "results" / "digits-sweep"
