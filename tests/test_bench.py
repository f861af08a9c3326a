import json

import pytest

from dcl_teach import bench


@pytest.mark.slow
def test_loss_bench_reports_every_variant_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    report = bench.main(
        ["loss", "--sizes", "32", "--dim", "8", "--repeats", "1", "--json", str(out)]
    )
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["results"] == report["results"]
    variants = {r["variant"] for r in saved["results"]}
    assert {"matmul floor", "fused", "naive"} <= variants
    floor = next(r for r in saved["results"] if r["variant"] == "matmul floor")
    assert floor["vs_floor"] == 1.0
    for r in saved["results"]:
        assert r["seconds"] > 0
        assert r["peak_extra_MiB"] is not None and r["peak_extra_MiB"] >= 0
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["torch"]
    assert "x floor" in printed and "naive/this" in printed


def test_variants_compute_the_same_loss_they_time():
    # the timed "naive" and "fused" variants must be the same loss, not merely run
    import torch

    from dcl_teach.losses import dcl

    z1, z2 = bench._inputs(16, 4, "cpu")
    assert torch.isclose(dcl(z1, z2, impl="dense"), dcl(z1, z2))


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench.main(["--device", "cuda", "--sizes", "8", "--no-memory"])


def test_third_party_losses_agree_with_ours_when_installed():
    import torch

    from dcl_teach.losses import LOSSES

    z1, z2 = bench._inputs(24, 6, "cpu")
    found = 0
    for kind in LOSSES:
        for name, other in bench._third_party(kind, 0.1).items():
            found += 1
            ours = LOSSES[kind](z1, z2, tau=0.1)
            assert torch.isclose(other(z1, z2), ours, rtol=1e-5), (kind, name)
    if not found:
        pytest.skip("neither lightly nor pytorch-metric-learning is installed")


def test_taus_are_timed_side_by_side(capsys):
    report = bench.main(
        ["loss", "--sizes", "16", "--dim", "4", "--repeats", "1", "--no-memory"]
        + ["--taus", "0.01", "0.1", "0.5"]
    )
    rows = {r["variant"]: r for r in report["results"]}
    assert report["taus"] == [0.01, 0.1, 0.5]
    assert rows["fused"]["tau"] == 0.1
    for t in (0.01, 0.5):
        row = rows[f"fused tau={t:g}"]
        assert row["tau"] == t and row["vs_fused"] == row["seconds"] / rows["fused"]["seconds"]
    assert "x fused" in capsys.readouterr().out


def test_variants_too_big_for_memory_are_skipped_with_the_reason(monkeypatch, capsys):
    monkeypatch.setattr(bench, "available_bytes", lambda device: 64 * 1024)  # 64 KiB left
    report = bench.main(
        ["loss", "--sizes", "64", "--dim", "4", "--repeats", "1", "--no-memory", "--taus"]
    )
    rows = {r["variant"]: r for r in report["results"]}
    assert rows["naive"]["failed"] and rows["naive"]["reason"].startswith("out of memory")
    assert rows["fused"]["seconds"] > 0 and rows["fused"]["naive_vs_this"] is None
    assert rows["matmul floor"]["seconds"] > 0
    captured = capsys.readouterr()
    assert "naive skipped at N=64: out of memory" in captured.err
    assert "out of memory: needs about" in captured.out


def test_variants_filter_and_no_warmup():
    report = bench.main(
        ["loss", "--sizes", "16", "--dim", "4", "--repeats", "1", "--no-memory", "--taus"]
        + ["--no-warmup", "--variants", "matmul floor", "fused"]
    )
    rows = {r["variant"]: r for r in report["results"]}
    assert set(rows) == {"matmul floor", "fused"}
    assert rows["fused"]["seconds"] > 0 and rows["fused"]["vs_floor"] > 0
