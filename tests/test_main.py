"""Tests for dcl_teach.__main__: flags generated from TrainConfig, runs, grid, errors."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcl_teach.__main__ import build_parser, config_from_args, main
from dcl_teach.train import CHECKPOINT_NAME, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--feature-dim", "16", "--proj-dim", "16", "--batch-size", "64", "--no-progress"]


def parse(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_every_config_field_has_a_flag_with_its_comment_as_help():
    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name.replace('_', '-')}" in text, f.name
    assert "temperature; 0.1 for all three losses" in text  # the comment of ``tau``


def test_no_flags_is_the_default_config():
    assert parse() == TrainConfig()


def test_flags_map_onto_the_config():
    c = parse(
        "--loss",
        "infonce",
        "--tau",
        "0.2",
        "--batch-size",
        "32",
        "--epochs",
        "3",
        "--num-labels-per-class",
        "5",
        "--max-steps",
        "none",
        "--out",
        "runs/x",
        "--no-progress",
        "--compile",
        "--amp",
        "off",
        "--warmup-epochs",
        "0",
    )
    expected = dataclasses.replace(
        TrainConfig(),
        loss="infonce",
        tau=0.2,
        batch_size=32,
        epochs=3,
        num_labels_per_class=5,
        max_steps=None,
        out_dir="runs/x",
        progress=False,
        compile=True,
        amp="off",
        warmup_epochs=0.0,
    )
    assert c == expected
    assert parse("--out-dir", "a").out_dir == "a"


def test_cifar10_flag_takes_the_cifar10_preset_under_the_flags():
    c = parse("--dataset", "cifar10", "--batch-size", "512")
    assert c == TrainConfig.for_dataset("cifar10", batch_size=512)
    assert c.epochs == 200


def test_preset_flag_comes_first_then_the_flags():
    assert parse("--preset", "colab") == TrainConfig.preset("colab")
    c = parse("--preset", "colab", "--batch-size", "128", "--epochs", "3", "--no-channels-last")
    assert c == TrainConfig.preset("colab", batch_size=128, epochs=3, channels_last=False)
    assert (c.width, c.amp, c.device) == (32, "fp16", "cuda")  # the preset under the flags
    assert parse("--preset", "cifar10") == parse("--dataset", "cifar10")
    assert parse("--preset", "digits") == TrainConfig()
    assert parse("--width", "16", "--dataset", "cifar10").width == 16


def test_compare_takes_a_preset_and_the_grid_replaces_loss_and_batch():
    args = build_parser().parse_args(
        [
            "compare",
            "--preset",
            "colab",
            "--losses",
            "infonce",
            "dcl",
            "--batch-sizes",
            "128",
            "256",
            "512",
        ]
    )
    assert config_from_args(args) == TrainConfig.preset("colab", out_dir="runs/compare")
    assert (args.losses, args.batch_sizes) == (["infonce", "dcl"], [128, 256, 512])


def test_config_from_args_reads_a_preset_from_any_namespace():
    # The sweep sub-command calls config_from_args too, with or without a preset attribute.
    assert config_from_args(argparse.Namespace(epochs=3)) == TrainConfig(epochs=3)
    assert config_from_args(argparse.Namespace(preset=None, dataset="cifar10")) == (
        TrainConfig.preset("cifar10")
    )
    ns = argparse.Namespace(preset="colab", epochs=4, progress=False)
    assert config_from_args(ns) == TrainConfig.preset("colab", epochs=4, progress=False)


def test_presets_are_listed_in_the_help():
    text = build_parser()._subparsers._group_actions[0].choices["compare"].format_help()
    assert "--preset {digits,cifar10,colab}" in text
    assert "a lightly-style ResNet-18 setting" in " ".join(text.split())


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loss", "ntxent"], "invalid choice: 'ntxent'"),
        (["--batch-size", "lots"], "invalid int value: 'lots'"),
        (["--tau", "-1"], "tau must be a finite number > 0, got -1.0"),
        (["--epochs", "0"], "epochs must be a positive integer, got 0"),
        (["--max-steps", "x"], "invalid int or none value: 'x'"),
        (["--wat"], "unrecognized arguments: --wat"),
        (["compare", "--losses"], "expected at least one argument"),
        (["--threads", "0"], "--threads must be a positive integer, got 0"),
        (["--preset", "imagenet"], "invalid choice: 'imagenet'"),
        (["--preset", "colab", "--dataset", "digits"], "width is the ResNet-18's base width"),
        (["--preset", "colab", "--feature-dim", "512"], "width 32 gives 256"),
    ],
)
def test_bad_flags_and_values_exit_2_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_tiny_train_run_prints_accuracy_and_baselines(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_FLAGS, "--max-steps", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dcl on digits: batch 64, 1 epochs (3 steps)" in text
    for line in ("trained encoder", "untrained encoder", "raw pixels"):
        assert line in text
    assert (out / CHECKPOINT_NAME).exists() and (out / "history.csv").exists()
    history = json.loads((out / "history.json").read_text())
    assert history["config"]["feature_dim"] == 16 and history["records"][-1]["step"] == 3

    # A second run into the same folder must say what to do instead of overwriting it.
    with pytest.raises(SystemExit):
        main(["train", *TINY_FLAGS, "--max-steps", "5", "--out", str(out)])
    assert "pass --resume to continue it or --fresh" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                *TINY_FLAGS,
                "--max-steps",
                "5",
                "--out",
                str(out),
                "--resume",
                "--no-baselines",
            ]
        )
        == 0
    )
    assert json.loads((out / "history.json").read_text())["meta"]["resumed_from_step"] == 3
    # A checkpoint from other settings is refused with the differing field named.
    assert main(["train", *TINY_FLAGS, "--tau", "0.3", "--out", str(out), "--resume"]) == 1
    assert "tau: 0.1 in the checkpoint, 0.3 now" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_on_a_tiny_grid_writes_plot_and_summary(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = [
        "compare",
        "--losses",
        "infonce",
        "dcl",
        "--batch-sizes",
        "32",
        "64",
        "--out",
        str(out),
        *[f for f in TINY_FLAGS if f not in ("--batch-size", "64")],
        "--epochs",
        "1",
        "--max-steps",
        "2",
    ]
    assert main(argv) == 0
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    summary = json.loads((out / "summary.json").read_text())
    runs = [(r["loss"], r["batch_size"]) for r in summary["runs"]]
    assert runs == [("infonce", 32), ("dcl", 32), ("infonce", 64), ("dcl", 64)]
    assert all(0 < r["knn_acc"] <= 1 for r in summary["runs"])
    with open(out / "summary.csv") as f:
        assert [(r["loss"], int(r["batch_size"])) for r in csv.DictReader(f)] == runs
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == [
        "dcl_bs32",
        "dcl_bs64",
        "infonce_bs32",
        "infonce_bs64",
    ]
    assert "infonce     32" in capsys.readouterr().out


@pytest.mark.slow
def test_python_dash_m_entry_point():
    proc = subprocess.run(
        [sys.executable, "-m", "dcl_teach", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "compare" in proc.stdout
