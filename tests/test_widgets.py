"""Tests for dcl_teach.widgets: the numbers each figure draws, and the explorers' wiring."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from dcl_teach.grads import coupling, vmf_weights
from dcl_teach.losses import dcl, info_nce, vmf_weights_from_cosines
from dcl_teach.widgets import (
    anchor_terms,
    default_cosines,
    explore_grad_comparison,
    explore_qb,
    explore_vmf_weights,
    grad_curve,
    qb_stats,
    render_grad_comparison,
    render_qb_histogram,
    render_vmf_weights,
    synthetic_pool,
    synthetic_views,
    views_with_cosines,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def off_diagonal_cosines(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Cosines of every pair of different images, same-view and cross-view."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    s = z @ z.t()  # (2N, 2N)
    image = torch.arange(2 * n) % n  # (2N,)
    return s[image[:, None] != image[None, :]]


# --- synthetic_views -----------------------------------------------------------------------


@pytest.mark.parametrize(("pos_sim", "neg_sim"), [(0.9, 0.2), (0.5, 0.0), (0.0, 0.5), (1.0, 1.0)])
def test_synthetic_views_exact_positive_and_mean_negative(pos_sim, neg_sim):
    z1, z2 = synthetic_views(256, 64, pos_sim=pos_sim, neg_sim=neg_sim, generator=gen())
    torch.testing.assert_close(z1.norm(dim=1), torch.ones(256), atol=1e-5, rtol=0)
    torch.testing.assert_close(z2.norm(dim=1), torch.ones(256), atol=1e-5, rtol=0)
    torch.testing.assert_close((z1 * z2).sum(dim=1), torch.full((256,), pos_sim), atol=1e-5, rtol=0)
    neg = off_diagonal_cosines(z1, z2)
    # the mean is neg_sim up to the random scatter (std ~ 1/sqrt(64) per entry, averaged)
    assert abs(neg.mean().item() - neg_sim) < 0.01


def test_synthetic_views_spread_shrinks_with_dimension():
    spread = [
        off_diagonal_cosines(
            *synthetic_views(128, d, pos_sim=0.5, neg_sim=0.2, generator=gen())
        ).std()
        for d in (8, 32, 128)
    ]
    assert spread[0] > spread[1] > spread[2] > 0
    # about 1/sqrt(d): quadrupling d halves the spread, within 25 %
    assert 0.375 < (spread[1] / spread[0]).item() < 0.625


def test_synthetic_views_is_seeded():
    a = synthetic_views(8, 16, pos_sim=0.5, neg_sim=0.1, generator=gen(3))
    b = synthetic_views(8, 16, pos_sim=0.5, neg_sim=0.1, generator=gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    ("n", "d", "pos_sim", "neg_sim", "match"),
    [
        (0, 8, 0.5, 0.1, "n >= 1"),
        (4, 2, 0.5, 0.1, "d >= 3"),
        (4, 8, 1.5, 0.1, "pos_sim"),
        (4, 8, 0.5, -0.1, "neg_sim"),
        (4, 8, 0.0, 0.6, r"\[0, 0.5\]"),
    ],
)
def test_synthetic_views_rejects_impossible_geometry(n, d, pos_sim, neg_sim, match):
    with pytest.raises(ValueError, match=match):
        synthetic_views(n, d, pos_sim=pos_sim, neg_sim=neg_sim, generator=gen())


def test_views_with_cosines():
    c = torch.tensor([1.0, 0.3, 0.0, -1.0], dtype=torch.float64)
    z1, z2 = views_with_cosines(c, 5, generator=gen())
    torch.testing.assert_close((z1 * z2).sum(dim=1), c)
    torch.testing.assert_close(z2.norm(dim=1), torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        views_with_cosines(torch.tensor([1.5]), 5, generator=gen())


# --- anchor_terms and qb_stats -------------------------------------------------------------


def anchor_grad_norms(z1, z2, tau, loss):
    """Loop reference: || d L_a / d z_a || by autograd, anchor by anchor (unit inputs)."""
    n = z1.shape[0]
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    per_anchor = loss(z1, z2, tau=tau, normalize=False, reduction="none")  # (2N,)
    norms = []
    for a in range(2 * n):
        g1, g2 = torch.autograd.grad(per_anchor[a], (z1, z2), retain_graph=True)
        norms.append((g1[a] if a < n else g2[a - n]).norm())
    return torch.stack(norms)


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 1.0), (5, 4, 0.1), (8, 16, 0.3)])
def test_anchor_terms_match_coupling_and_autograd(n, d, tau):
    g = gen(n)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    z2 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    q, g_infonce, g_dcl = anchor_terms(z1, z2, tau=tau)
    torch.testing.assert_close(q, coupling(z1, z2, tau=tau))
    torch.testing.assert_close(g_infonce, anchor_grad_norms(z1, z2, tau, info_nce))
    torch.testing.assert_close(g_dcl, anchor_grad_norms(z1, z2, tau, dcl))


def test_anchor_terms_batched_equals_loop():
    g = gen(1)
    z1, z2 = torch.randn(3, 6, 4, generator=g), torch.randn(3, 6, 4, generator=g)
    batched = anchor_terms(z1, z2, tau=0.2)
    for b in range(3):
        for got, want in zip(batched, anchor_terms(z1[b], z2[b], tau=0.2)):
            torch.testing.assert_close(got[b], want)


def test_anchor_terms_rejects_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        anchor_terms(torch.randn(1, 3), torch.randn(1, 3), tau=0.1)
    with pytest.raises(ValueError, match="tau"):
        anchor_terms(torch.randn(4, 3), torch.randn(4, 3), tau=0.0)


def test_qb_stats_cuts_the_pool_into_batches():
    z1, z2 = synthetic_pool(pos_sim=0.5, neg_sim=0.1, num_pairs=100)
    st = qb_stats(z1, z2, tau=0.1, batch_size=16, generator=gen())
    assert (st.num_batches, st.q.shape[0]) == (6, 2 * 16 * 6)  # 100 // 16 = 6, 4 pairs dropped
    # without shuffling, batch k holds pairs 16k..16k+15
    st = qb_stats(z1, z2, tau=0.1, batch_size=16)
    torch.testing.assert_close(st.q[32:64], coupling(z1[16:32], z2[16:32], tau=0.1))
    with pytest.raises(ValueError, match=r"\[2, 100\]"):
        qb_stats(z1, z2, tau=0.1, batch_size=101)


def test_small_batches_push_qb_down():
    z1, z2 = synthetic_pool(pos_sim=0.5, neg_sim=0.1)
    means = [qb_stats(z1, z2, tau=0.1, batch_size=b).mean_q for b in (4, 16, 64, 256)]
    assert means == sorted(means) and means[0] < 0.5 < means[-1]


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
    text = ax.texts[0].get_text()
    assert f"{st.mean_q:.3f}" in text
    assert f"{st.mean_g_infonce:.2f}" in text and f"{st.mean_g_dcl:.2f}" in text
    assert plt.get_fignums() == before  # pyplot never sees these figures: nothing to leak


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
    left, right = fig.axes
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


def test_vmf_weights_figure_data():
    c = default_cosines(32)
    fig = render_vmf_weights(sigma=0.1, cosines=c)
    ax = fig.axes[0]
    xy = torch.as_tensor(ax.collections[0].get_offsets().data)
    w = vmf_weights_from_cosines(c, sigma=0.1)
    torch.testing.assert_close(xy[:, 0], c)
    torch.testing.assert_close(xy[:, 1], w)
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
