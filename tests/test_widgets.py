"""Tests for dcl_teach.widgets: the numbers each figure draws, and the explorers' wiring."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch

import dcl_teach.synthetic
from dcl_teach.grads import coupling, vmf_weights
from dcl_teach.losses import vmf_weights_from_cosines
from dcl_teach.synthetic import (
    default_cosines,
    grad_curve,
    qb_stats,
    synthetic_pool,
    views_with_cosines,
)
from dcl_teach.widgets import (
    explore_grad_comparison,
    explore_qb,
    explore_vmf_weights,
    render_grad_comparison,
    render_qb_histogram,
    render_vmf_weights,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_old_names_are_still_importable_from_widgets():
    import dcl_teach.widgets as w

    for name in (
        "anchor_terms",
        "qb_stats",
        "QBStats",
        "synthetic_pool",
        "synthetic_views",
        "views_with_cosines",
        "default_cosines",
        "grad_curve",
        "BATCH_SIZES",
    ):
        assert getattr(w, name) is getattr(dcl_teach.synthetic, name), name


# --- figures -------------------------------------------------------------------------------


def test_qb_histogram_draws_every_anchor_and_the_mean():
    before = plt.get_fignums()
    fig = render_qb_histogram(tau=0.2, batch_size=32, pos_sim=0.6, neg_sim=0.2, seed=5)
    ax = fig.axes[0]
    st = qb_stats(
        *synthetic_pool(pos_sim=0.6, neg_sim=0.2, seed=5), tau=0.2, batch_size=32, generator=gen(5)
    )
    assert sum(p.get_height() for p in ax.patches) == st.q.shape[0] == 2 * 32 * (2048 // 32)
    assert ax.lines[0].get_xdata()[0] == pytest.approx(st.mean_q, abs=1e-7)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"mean $q_B$ = {st.mean_q:.3f}"]
    text = ax.texts[0].get_text()
    assert "tangential" in text and f"{st.mean_g_infonce:.2f}" in text and "DCL" not in text
    assert "τ = 0.2" in ax.get_title() and ax.get_ylabel() == "anchors"
    assert plt.get_fignums() == before  # pyplot never sees these figures: nothing to leak


def test_qb_histogram_shows_dcl_only_when_asked():
    fig = render_qb_histogram(tau=0.1, batch_size=16, show_dcl=True)
    st = qb_stats(
        *synthetic_pool(pos_sim=0.5, neg_sim=0.1), tau=0.1, batch_size=16, generator=gen()
    )
    text = fig.axes[0].texts[0].get_text()
    assert f"DCL     {st.mean_g_dcl:.2f}" in text and f"InfoNCE {st.mean_g_infonce:.2f}" in text


def test_qb_histogram_on_embeddings_mean_is_coupling_mean():
    g = gen(2)
    z1, z2 = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    fig = render_qb_histogram(tau=0.1, batch_size=64, source=(z1, z2))  # one batch: the pool
    assert fig.axes[0].lines[0].get_xdata()[0] == pytest.approx(
        coupling(z1, z2, tau=0.1).mean().item(), abs=1e-6
    )
    assert "embeddings" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="synthetic"):
        render_qb_histogram(tau=0.1, batch_size=8, source="cifar")


def test_grad_comparison_draws_curves_and_per_anchor_points():
    fig = render_grad_comparison(tau=0.1, batch_size=16, seed=1)
    left, right = fig.axes[:2]  # the third is the colour bar
    pool = synthetic_pool(pos_sim=0.5, neg_sim=0.1, seed=1)
    sizes, gi, gd = grad_curve(*pool, tau=0.1, seed=1)
    assert list(left.lines[0].get_xdata()) == sizes
    assert left.lines[0].get_ydata() == pytest.approx(gi)
    assert left.lines[1].get_ydata() == pytest.approx(gd)
    # DCL removes q_B < 1 from every anchor: InfoNCE is below DCL everywhere
    assert all(a < b for a, b in zip(gi, gd))
    xy = torch.as_tensor(right.collections[0].get_offsets().data)
    st = qb_stats(*pool, tau=0.1, batch_size=16, generator=gen(1))
    torch.testing.assert_close(xy[:, 0].float(), st.g_dcl)
    torch.testing.assert_close(xy[:, 1].float(), st.q * st.g_dcl)
    # the points are coloured by q_B, on a colour bar from 0 to 1
    torch.testing.assert_close(torch.as_tensor(right.collections[0].get_array()).float(), st.q)
    assert right.collections[0].get_clim() == (0, 1) and len(fig.axes) == 3
    assert "τ = 0.1" in left.get_title() and "tau" not in left.get_title()


def test_grad_comparison_shows_the_magnitudes_before_projection_faintly():
    fig = render_grad_comparison(tau=0.2, batch_size=8, seed=2, batch_sizes=(4, 8, 64))
    left = fig.axes[0]
    pool = synthetic_pool(pos_sim=0.5, neg_sim=0.1, seed=2)
    labels = [line.get_label() for line in left.lines[:4]]
    assert labels == ["InfoNCE", "DCL", "InfoNCE, before projection", "DCL, before projection"]
    for k, b in enumerate((4, 8, 64)):
        st = qb_stats(*pool, tau=0.2, batch_size=b, generator=gen(2))
        assert left.lines[2].get_ydata()[k] == pytest.approx(float(st.g_infonce_raw.mean()))
        assert left.lines[3].get_ydata()[k] == pytest.approx(float(st.g_dcl_raw.mean()))
        # projecting removes the radial part: never longer than before, for every anchor
        assert bool((st.g_dcl <= st.g_dcl_raw + 1e-6).all())
        assert left.lines[0].get_ydata()[k] <= left.lines[2].get_ydata()[k] + 1e-6
    assert left.lines[2].get_alpha() < 1 and left.lines[0].get_alpha() in (None, 1)


def test_vmf_weights_figure_data():
    c = default_cosines(32)
    fig = render_vmf_weights(sigma=0.1, cosines=c)
    ax = fig.axes[0]
    xy = torch.as_tensor(ax.collections[0].get_offsets().data)
    w = vmf_weights_from_cosines(c, sigma=0.1)
    torch.testing.assert_close(xy[:, 0], c)
    torch.testing.assert_close(xy[:, 1], w)
    assert ax.get_title() == "σ = 0.1, N = 32 pairs"
    text = ax.texts[0].get_text()
    assert "mean w = 1.000" in text
    assert f"w < 0: {int((w < 0).sum())} of 32" in text and int((w < 0).sum()) > 0
    # the smooth curve passes through every pair's point
    curve_x = torch.as_tensor(ax.lines[0].get_xdata())
    curve_y = torch.as_tensor(ax.lines[0].get_ydata())
    i = int(c.argmax())
    assert curve_x[-1].item() == pytest.approx(c[i].item())
    assert curve_y[-1].item() == pytest.approx(w[i].item())


def test_vmf_weights_figure_agrees_with_grads_vmf_weights():
    c = default_cosines(16, seed=3)
    z1, z2 = views_with_cosines(c, 8, generator=gen())
    xy = torch.as_tensor(
        render_vmf_weights(sigma=0.5, cosines=c).axes[0].collections[0].get_offsets().data
    )
    torch.testing.assert_close(xy[:, 1], vmf_weights(z1, z2, sigma=0.5))
    assert xy[:, 1].mean().item() == pytest.approx(1.0)


def test_outlier_pair_gets_a_negative_weight():
    c = torch.zeros(256, dtype=torch.float64)
    c[0] = 1.0  # one pair far more similar than the rest (the example of notebook 05)
    text = render_vmf_weights(sigma=0.5, cosines=c).axes[0].texts[0].get_text()
    expected = 2 - 256 * math.exp(2) / (255 + math.exp(2))
    assert f"min w  = {expected:.3f}" in text and "w < 0: 1 of 256" in text


# --- explorers -----------------------------------------------------------------------------


def controls(w) -> dict:
    return {c.description: c for c in w.children if hasattr(c, "value") and c.description}


def test_explore_qb_sliders_and_redraw():
    w = explore_qb()
    ctl = controls(w)
    assert {"tau", "batch size", "positive similarity", "negative similarity"} <= set(ctl)
    assert "geometry" not in ctl
    ctl["batch size"].value = 8
    assert w.result[:4] == b"\x89PNG"
    first = w.result
    ctl["tau"].value = 0.5
    assert w.result[:4] == b"\x89PNG" and w.result != first


def test_explore_qb_show_dcl_reaches_the_figure(monkeypatch):
    seen = []

    def spy(**values):
        seen.append(values["show_dcl"])
        return render_qb_histogram(**values)

    import dcl_teach.widgets as w

    monkeypatch.setattr(w, "render_qb_histogram", spy)
    explore_qb(show_dcl=True)
    explore_qb()
    assert seen == [True, False]


def test_explore_qb_with_embeddings_offers_the_geometry_menu():
    g = gen()
    w = explore_qb((torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)))
    ctl = controls(w)
    ctl["geometry"].value = "trained encoder"
    assert w.result[:4] == b"\x89PNG"


def test_explore_grad_comparison_and_vmf_weights():
    w = explore_grad_comparison()
    assert {"tau", "batch size"} <= set(controls(w))
    controls(w)["tau"].value = 0.05
    assert w.result[:4] == b"\x89PNG"
    w = explore_vmf_weights()
    controls(w)["sigma"].value = 0.1
    assert w.result[:4] == b"\x89PNG"
