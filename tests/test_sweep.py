"""The sweep: its plan, its controls, its statistics, its files, and the committed results."""

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from dcl_teach import sweep as sw
from dcl_teach.__main__ import main
from dcl_teach.train import TrainConfig

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "digits-sweep"
TINY = sw.SweepConfig(
    base=TrainConfig(epochs=1, progress=False, knn_k=20),
    batch_sizes=(256,),
    seeds=(0, 1),
    arms=("infonce", "dcl", "infonce_lrq"),
    few_draws=2,
)


def test_plan_orders_the_control_after_its_infonce_run_and_matches_steps():
    config = sw.SweepConfig(batch_sizes=(8, 32, 256), seeds=(0,), match_steps_of=32)
    runs = sw.plan(config, 1437)
    names = [r.name for r in runs]
    assert names.index("infonce_bs8_seed0") < names.index("infonce_lrq_bs8_seed0")
    steps = {r.name: r.epochs * (1437 // r.batch_size) for r in runs}
    reference = (1437 // 32) * config.base.epochs  # the steps of a batch of 32 in the main grid
    assert steps["infonce_bs32_seed0"] == reference
    # Steps-matched arms run only where asked, within one epoch's steps of the reference.
    assert {r.batch_size for r in runs if r.arm.endswith("_steps")} == {256}
    assert abs(steps["dcl_steps_bs256_seed0"] - reference) <= 1437 // 256
    assert steps["dcl_bs256_seed0"] < reference / 5  # the confound the control removes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arms": ("simclr",)}, "unknown arms ['simclr']"),
        ({"arms": ("dcl", "infonce_lrq")}, "needs the arm 'infonce'"),
        ({"seeds": ()}, "at least one batch size, one seed"),
        ({"few_k": 51}, "few_k must be between 1 and the labelled bank"),
        ({"few_draws": 0}, "few_draws >= 1"),
    ],
)
def test_bad_sweep_configs_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sw.SweepConfig(**kwargs)


def test_plan_rejects_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="batch size 2048 exceeds the 1437 training images"):
        sw.plan(sw.SweepConfig(batch_sizes=(2048,)), 1437)


def test_evaluation_keeps_k_within_the_labelled_bank():
    config = sw.SweepConfig(few_labels=1, few_draws=3, few_k=1)
    labels = torch.arange(10).repeat(4)  # (40,) four images per class
    draws = sw.label_draws(labels, config)
    assert len(draws) == 3 and all(len(d) == 10 for d in draws)
    assert len({tuple(d.tolist()) for d in draws}) > 1  # different draws ...
    assert [d.tolist() for d in draws] == [d.tolist() for d in sw.label_draws(labels, config)]
    h = torch.nn.functional.normalize(torch.eye(10)[labels] + 0.01 * torch.randn(40, 10), dim=1)
    result = sw.evaluate_features(h, labels, h, labels, draws, config=config)
    assert result["knn_few"] == result["knn_all"] == 1.0  # ... and separable classes


@pytest.mark.slow
def test_a_tiny_sweep_writes_results_resumes_and_applies_the_lr_control(tmp_path, monkeypatch):
    results = sw.run_sweep(TINY, tmp_path, progress=False, command="test")
    assert [r["name"] for r in results["runs"]] == [
        f"{arm}_bs256_seed{s}" for s in (0, 1) for arm in ("infonce", "dcl", "infonce_lrq")
    ]
    rows = {r["name"]: r for r in results["runs"]}
    for s in (0, 1):
        q = rows[f"infonce_bs256_seed{s}"]["q_b_mean"]
        assert 0 < q < 1
        assert rows[f"infonce_lrq_bs256_seed{s}"]["lr"] == pytest.approx(TINY.base.lr / q)
        assert rows[f"dcl_bs256_seed{s}"]["lr"] == TINY.base.lr
    for r in results["runs"]:
        assert all(0 < r[m] <= 1 for m in sw.METRICS)
        folder = tmp_path / "runs" / r["name"]
        assert (folder / "history.json").exists() and not (folder / "checkpoint.pt").exists()
    prov = results["provenance"]
    for key in ("dcl_teach_version", "torch_version", "cpu", "threads", "command", "wall_time_s"):
        assert prov[key] is not None
    assert prov["runs_wall_time_s"] == pytest.approx(sum(r["wall_time_s"] for r in results["runs"]))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["runs"] == json.loads(json.dumps(results["runs"]))
    with open(tmp_path / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    with open(tmp_path / "summary.csv") as f:
        assert {r["arm"] for r in csv.DictReader(f)} == {"infonce", "dcl", "infonce_lrq"}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(sw, "train", no_training)
    again = sw.run_sweep(TINY, tmp_path, progress=False)
    assert again["runs"] == results["runs"]


@pytest.mark.slow
def test_only_trains_the_named_runs_and_rejects_unknown_names(tmp_path):
    with pytest.raises(ValueError, match=r"no runs named \['dcl_bs8_seed0'\]"):
        sw.run_sweep(TINY, tmp_path, only=["dcl_bs8_seed0"], progress=False)
    results = sw.run_sweep(TINY, tmp_path, only=["dcl_bs256_seed1"], progress=False)
    assert [r["name"] for r in results["runs"]] == ["dcl_bs256_seed1"]


def test_sweep_cli_help_and_bad_input(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    assert "--batch-sizes" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--arms", "dcl", "infonce_lrq", "--out", "/nonexistent/x"])
    assert e.value.code == 2
    assert "needs the arm 'infonce'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- committed results


@pytest.fixture(scope="module")
def committed():
    return sw.load_results(COMMITTED)


def test_committed_sweep_covers_the_grid(committed):
    config = committed["config"]
    assert len(config["batch_sizes"]) >= 4 and len(config["seeds"]) >= 3
    arms = {r["arm"] for r in committed["runs"]}
    assert {"infonce", "dcl", "dclw", "infonce_lrq"} <= arms
    for arm in ("infonce", "dcl", "dclw", "infonce_lrq"):
        for bs in config["batch_sizes"]:
            seeds = {
                r["seed"] for r in committed["runs"] if (r["arm"], r["batch_size"]) == (arm, bs)
            }
            assert seeds == set(config["seeds"]), (arm, bs)
    # The stored summary and gaps are what the stored runs give.
    for stored, computed in zip(
        committed["summary"], sw.summarize_runs(committed["runs"]), strict=True
    ):
        assert stored == pytest.approx(computed)
    assert [g["mean"] for g in committed["gaps"]] == pytest.approx(
        [g["mean"] for g in sw.paired_gaps(committed["runs"])]
    )


# Cross-machine tolerance for re-running a committed run (accuracy as a fraction, and q_B). On
# another CPU the kernels round differently and the training trajectory diverges, so a rerun is
# a new draw of the same experiment. Measured: four committed runs (infonce/dcl at B = 64 seed 0
# and B = 32 seed 1) re-run with today's code natively and under ATEN_CPU_CAPABILITY=default
# differed from the committed values by at most 0.018 (few-label kNN), 0.015 (few-label probe),
# 0.022 (kNN, all labels), 0.014 (probe, all labels) and 0.004 (mean q_B); the committed grid's
# seed-to-seed sd is up to 0.016 for few-label kNN. The tolerances are about twice the measured
# deviations: a rerun that misses them has changed the experiment, not its rounding.
REPRODUCE_RUNS = ("infonce_bs64_seed0", "dcl_bs64_seed0")
REPRODUCE_ATOL = {
    "knn_few": 0.04,
    "probe_few": 0.03,
    "knn_all": 0.045,
    "probe_all": 0.03,
    "q_b_mean": 0.01,
}


@pytest.mark.slow
def test_committed_runs_reproduce_within_the_cross_machine_tolerance(committed, tmp_path):
    c = committed["config"]
    base = TrainConfig(**{**c["base"], "out_dir": None, "progress": False})
    config = sw.SweepConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in c.items() if k != "base"},
        base=base,
    )
    torch.set_num_threads(committed["provenance"]["threads"])
    again = sw.run_sweep(config, tmp_path, only=REPRODUCE_RUNS, progress=False)
    shipped = {r["name"]: r for r in committed["runs"]}
    for row in again["runs"]:
        for key, atol in REPRODUCE_ATOL.items():
            assert row[key] == pytest.approx(shipped[row["name"]][key], abs=atol), (
                row["name"],
                key,
            )
    assert dataclasses.asdict(config.base)["epochs"] == c["base"]["epochs"]


def test_the_readme_shows_the_committed_sweep_and_its_claims_hold(committed):
    readme = (COMMITTED.parents[1] / "README.md").read_text()
    block = readme.split("<!-- sweep:start -->")[1].split("<!-- sweep:end -->")[0]
    assert block.strip() == f"```text\n{sw.format_summary(committed)}\n```"
    hours = committed["provenance"]["runs_wall_time_s"] / 3600
    assert "add up to 2.8 h" in readme and round(hours, 1) == 2.8
    gaps = {(g["arm"], g["reference"], g["batch_size"]): g for g in committed["gaps"]}

    def decided_positive(arm, ref, b):
        return gaps[arm, ref, b]["decided"] and gaps[arm, ref, b]["mean"] > 0

    # "DCL beats InfoNCE at the small batch sizes, and the gap closes by B = 64"
    assert all(decided_positive("dcl", "infonce", b) for b in (8, 16, 32))
    assert not gaps["dcl", "infonce", 64]["decided"]
    # "the learning-rate control does not close it at B = 16 and 32"
    assert all(decided_positive("dcl", "infonce_lrq", b) for b in (16, 32))
    # "with the steps matched, large batches recover most of their accuracy"
    cells = {(r["arm"], r["batch_size"]): r["knn_few"] for r in committed["summary"]}
    for loss in ("infonce", "dcl"):
        lost = cells[loss, 8] - cells[loss, 256]
        recovered = cells[f"{loss}_steps", 256] - cells[loss, 256]
        assert recovered > lost / 2
    # "22 intervals"
    assert len(committed["gaps"]) == 22 and "With 22 intervals" in readme
