"""Tests for dcl_teach.bench_train: report layout (no timing assertions) and the per-sample path."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from dcl_teach.augment import Recipe, recipe_for
from dcl_teach.bench_train import PerSampleViews, augment_one, main


@pytest.mark.slow
def test_report_layout_digits(tmp_path, capsys):
    path = tmp_path / "out" / "bench.json"
    argv = ["--dataset", "digits", "--batch-size", "8", "--steps", "2", "--warmup", "1"]
    report = main([*argv, "--workers", "0,2", "--train-steps", "1", "--json", str(path)])
    on_disk = json.loads(path.read_text())
    assert on_disk["augment"] == json.loads(json.dumps(report["augment"]))
    assert report["data"] == "real" and report["image_shape"] == [1, 8, 8]
    assert report["config"]["workers"] == [0, 2] and report["config"]["batch_size"] == 8
    machine = report["machine"]
    for key in ("cpu", "cores", "torch", "device", "device_name"):
        assert machine[key]
    assert machine["torch"] == torch.__version__ and machine["device_name"] == machine["cpu"]
    rows = report["augment"]
    pipelines = [(r["pipeline"], r["workers"]) for r in rows]
    assert pipelines == [("batched", None), ("per-sample", 0), ("per-sample", 2)]
    for r in rows:
        assert r["images"] == 16 and r["seconds"] > 0
        assert r["images_per_s"] == pytest.approx(16 / r["seconds"])
        assert r["views_per_s"] == pytest.approx(2 * r["images_per_s"])
    ratios = report["augment_ratios"]
    assert set(ratios) == {"batched_over_per_sample_workers_0", "batched_over_per_sample_workers_2"}
    assert ratios["batched_over_per_sample_workers_0"] == pytest.approx(
        rows[0]["images_per_s"] / rows[1]["images_per_s"]
    )
    assert [r["images"] for r in report["train"]] == [8, 8, 8]
    out = capsys.readouterr().out
    assert "batched" in out and "per-sample" in out and str(path) in out


def test_synthetic_cifar_is_labelled(tmp_path):
    report = main(
        ["--dataset", "cifar10", "--root", str(tmp_path), "--batch-size", "4", "--steps", "1"]
        + ["--warmup", "0", "--workers", "0", "--train-steps", "0"]
    )
    assert report["data"].startswith("synthetic") and report["image_shape"] == [3, 32, 32]
    assert report["train_skipped"] == "--train-steps 0"
    assert len(report["augment"]) == 2


@pytest.mark.parametrize(
    "argv", [["--steps", "0"], ["--workers", "a,b"], ["--dataset", "mnist"], ["--batch-size", "0"]]
)
def test_bad_arguments_exit(argv):
    with pytest.raises(SystemExit):
        main(argv)


def test_per_sample_identity_matches_input():
    identity = Recipe(
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        gray_p=0.0,
        mean=(0.0,) * 3,
        std=(1.0,) * 3,
    )
    x = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    assert torch.equal(augment_one(x, identity), x.float() / 255)
    flipped = dataclasses.replace(identity, flip_p=1.0)
    assert torch.equal(augment_one(x, flipped), x.flip(-1).float() / 255)


def test_per_sample_dataset_gives_two_different_views():
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    ds = PerSampleViews(images, torch.arange(5), recipe_for("cifar10"))
    torch.manual_seed(0)
    v1, v2, y = ds[3]
    assert v1.shape == v2.shape == (3, 32, 32) and y.item() == 3 and not torch.equal(v1, v2)
    assert len(ds) == 5
