"""Tests for dcl_teach.gpu_check: no CUDA, no report; the estimate; the report from stub steps."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from dcl_teach import gpu_check
from dcl_teach.train import TrainConfig


def test_without_cuda_it_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu-check.json"
    assert gpu_check.main(["--out", str(out)]) == 2
    assert not out.exists() and list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert "CUDA is not available here" in err and "no report was written" in err


def test_forward_flops_of_the_standard_and_the_colab_resnet18():
    # Convolutions of a ResNet-18 on a 32x32 image: 0.556 G multiply-adds, 2 FLOPs each.
    standard = gpu_check.forward_flops(TrainConfig.preset("cifar10"))
    colab = gpu_check.forward_flops(TrainConfig.preset("colab"))
    assert standard == 1_111_490_560 and colab == 278_790_144
    assert 0.25 < colab / standard < 0.251  # width 32: a quarter, plus the head


def test_estimate_is_flops_over_rate_plus_step_overheads():
    c = dataclasses.replace(TrainConfig.preset("colab"), epochs=2, eval_every=5)
    f = gpu_check.forward_flops(c)
    steps = 50_000 // c.batch_size
    expected = (2 * steps * (c.batch_size * 6 * f / 1e13 + 0.01) + 60_000 * f / 1e13) / 60
    got = gpu_check.estimate_minutes(c, tflops=10.0, step_overhead_s=0.01)
    assert got == pytest.approx(expected, rel=1e-12)
    no_overhead = gpu_check.estimate_minutes(c, tflops=10.0, step_overhead_s=0.0)
    assert gpu_check.estimate_minutes(c, tflops=20.0, step_overhead_s=0.0) == pytest.approx(
        no_overhead / 2
    )


def test_colab_preset_fits_its_budget_by_the_estimate():
    table = gpu_check.sizing_table()
    assumed = table["cases"]["assumed"]
    assert max(assumed["minutes_per_run"].values()) <= gpu_check.BUDGET_MINUTES["run"]
    assert assumed["minutes_grid"] <= gpu_check.BUDGET_MINUTES["grid"]
    pessimistic = table["cases"]["pessimistic (half the rate, twice the overhead)"]
    assert pessimistic["minutes_grid"] <= gpu_check.BUDGET_MINUTES["grid"]
    assert table["assumed_tflops"] == pytest.approx(6.5)
    assert "GFLOP per image" in gpu_check.format_sizing(table)


def test_run_step_reports_passed_failed_and_timeout(tmp_path):
    ok = gpu_check.run_step("ok", [sys.executable, "-c", "print('hi')"], timeout=60, cwd=tmp_path)
    assert (ok["status"], ok["returncode"], ok["output_tail"].strip()) == ("passed", 0, "hi")
    bad = gpu_check.run_step(
        "bad", [sys.executable, "-c", "raise SystemExit(3)"], timeout=60, cwd=tmp_path
    )
    assert (bad["status"], bad["returncode"]) == ("failed", 3)
    slow = gpu_check.run_step(
        "slow",
        [sys.executable, "-c", "print('x', flush=True); import time; time.sleep(30)"],
        timeout=3,
        cwd=tmp_path,
    )
    assert slow["status"] == "timeout" and slow["returncode"] is None and slow["seconds"] < 20


def fake_step(calls):
    """A stand-in for run_step: records the command; the colab step writes a history."""

    def step(name, cmd, *, timeout, cwd):
        calls.append((name, list(cmd), timeout))
        if name == "colab_epochs":
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            records = [
                {
                    "epoch": e,
                    "images_per_s": ips,
                    "epoch_time_s": 50_000 / ips,
                    "loss": 5.0,
                    "knn_acc": None if e == 1 else 0.1,
                }
                for e, ips in ((1, 2000.0), (2, 2500.0))
            ]
            meta = {"device_name": "Stub GPU", "wall_time_s": 50.0}
            (out / "history.json").write_text(json.dumps({"records": records, "meta": meta}))
        return {
            "name": name,
            "command": " ".join(cmd),
            "status": "passed",
            "returncode": 0,
            "seconds": 1.0,
            "output_tail": "",
        }

    return step


def test_report_from_stub_steps_names_the_gpu_and_the_images_per_s(tmp_path, monkeypatch):
    monkeypatch.setenv("DCL_TEACH_DATA", str(tmp_path / "empty"))  # no real CIFAR-10: fake data
    calls = []
    work = tmp_path / "work"
    work.mkdir()
    report = gpu_check.run_check(
        work, gpu={"name": "Stub GPU"}, step=fake_step(calls), records_per_batch=20
    )
    names = [c[0] for c in calls]
    assert names == ["cuda_tests", "loss_bench", "colab_epochs"]
    cmds = {name: cmd for name, cmd, _ in calls}
    assert "-m" in cmds["cuda_tests"] and "gpu" in cmds["cuda_tests"]
    assert cmds["loss_bench"][1:6] == ["-m", "dcl_teach.bench", "loss", "--device", "cuda"]
    colab = cmds["colab_epochs"]
    assert (
        colab[colab.index("--preset") + 1] == "colab" and colab[colab.index("--epochs") + 1] == "2"
    )
    data_root = Path(colab[colab.index("--data-root") + 1])
    assert (data_root / "cifar-10-batches-bin" / "data_batch_1.bin").stat().st_size == 20 * 3073
    assert sum(t for _, _, t in calls) <= 8 * 60  # the whole check fits in 8 minutes

    out = tmp_path / "gpu-check.json"
    gpu_check.write_report(out, report)
    saved = json.loads(out.read_text())
    assert saved["gpu"]["name"] == "Stub GPU" and saved["all_passed"] is True
    assert [s["status"] for s in saved["steps"]] == ["passed"] * 3
    assert saved["colab"]["images_per_s"] == [2000.0, 2500.0]
    assert saved["colab"]["data"].startswith("fake CIFAR-10 in the real format (100 + 20")
    assert saved["colab"]["colab_run_training_minutes_on_this_gpu"] == pytest.approx(
        10 * 50_000 / 2500 / 60
    )
    assert saved["loss_bench"] is None  # the stub bench wrote no file


def test_main_writes_the_report_and_returns_1_when_a_step_failed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "gpu_info", lambda: {"name": "Stub GPU"})
    report = {
        "gpu": {"name": "Stub GPU"},
        "colab": {"images_per_s": [1.0, 2.0]},
        "steps": [{"name": "cuda_tests", "status": "failed", "seconds": 1.0}],
        "all_passed": False,
    }
    monkeypatch.setattr(gpu_check, "run_check", lambda work, gpu: report)
    out = tmp_path / "r.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    assert json.loads(out.read_text()) == report
    assert "Stub GPU: 2 images/s" in capsys.readouterr().out
