"""Tests for dcl_teach.synthetic: the batch geometry, q_B and the anchor-gradient magnitudes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dcl_teach.grads import coupling, project_tangent
from dcl_teach.losses import dcl, info_nce
from dcl_teach.synthetic import (
    anchor_terms,
    default_cosines,
    grad_curve,
    qb_stats,
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


def anchor_grads(z1, z2, tau, loss):
    """Loop reference: d L_a / d z_a by autograd, anchor by anchor (unit inputs): (2N, D)."""
    n = z1.shape[0]
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    per_anchor = loss(z1, z2, tau=tau, normalize=False, reduction="none")  # (2N,)
    rows = []
    for a in range(2 * n):
        g1, g2 = torch.autograd.grad(per_anchor[a], (z1, z2), retain_graph=True)
        rows.append(g1[a] if a < n else g2[a - n])
    return torch.stack(rows)


def unit(n, d, seed, dtype=torch.float64):
    g = gen(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)


@pytest.mark.parametrize(("n", "d", "tau"), [(2, 3, 1.0), (5, 4, 0.1), (8, 16, 0.3)])
def test_anchor_terms_match_coupling_and_autograd(n, d, tau):
    z1, z2 = unit(n, d, n), unit(n, d, n + 100)
    z = torch.cat([z1, z2])  # (2N, D)
    for loss in (info_nce, dcl):
        auto = anchor_grads(z1, z2, tau, loss)  # (2N, D)
        q, g_infonce, g_dcl = anchor_terms(z1, z2, tau=tau, projected=False)
        torch.testing.assert_close(q, coupling(z1, z2, tau=tau))
        want = g_infonce if loss is info_nce else g_dcl
        torch.testing.assert_close(want, auto.norm(dim=1))
        # projected: the norm of (I - z z^T) g, with z the anchor
        tangential = auto - (auto * z).sum(dim=1, keepdim=True) * z  # (2N, D)
        q, g_infonce, g_dcl = anchor_terms(z1, z2, tau=tau)
        want = g_infonce if loss is info_nce else g_dcl
        torch.testing.assert_close(want, tangential.norm(dim=1))


def test_projected_magnitude_is_what_reaches_the_raw_output():
    """Through z = r / |r| the encoder output r receives (I - z z^T) g / |r|: at |r| = 1 the
    norm of that gradient is the projected magnitude, not the raw one."""
    g = gen(4)
    r1 = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    r2 = F.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    leaf = torch.cat([r1, r2]).requires_grad_()  # (2N, D) unit rows, normalised again inside
    per_anchor = info_nce(leaf[:6], leaf[6:], tau=0.2, reduction="none")  # normalize=True
    (grad_0,) = torch.autograd.grad(per_anchor[0], leaf)
    _, g_proj, _ = anchor_terms(r1, r2, tau=0.2)
    _, g_raw, _ = anchor_terms(r1, r2, tau=0.2, projected=False)
    assert grad_0[0].norm().item() == pytest.approx(g_proj[0].item(), rel=1e-10)
    assert g_proj[0] < g_raw[0]  # the radial part is really there and really removed


def test_infonce_over_dcl_is_q_before_and_after_projection():
    z1, z2 = unit(7, 4, 1), unit(7, 4, 2)
    for projected in (True, False):
        q, gi, gd = anchor_terms(z1, z2, tau=0.15, projected=projected)
        torch.testing.assert_close(gi / gd, q)


def test_anchor_terms_scale_free():
    """anchor_terms normalises its input: rescaling the raw rows changes nothing."""
    z1, z2 = unit(5, 3, 3), unit(5, 3, 4)
    scale = torch.linspace(0.5, 4.0, 5, dtype=torch.float64)[:, None]  # (N, 1)
    for got, want in zip(anchor_terms(scale * z1, 2 * z2, tau=0.3), anchor_terms(z1, z2, tau=0.3)):
        torch.testing.assert_close(got, want)


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


def test_qb_stats_raw_and_tangential_fields():
    z1, z2 = synthetic_pool(pos_sim=0.5, neg_sim=0.1, num_pairs=64)
    st = qb_stats(z1, z2, tau=0.1, batch_size=16)
    q, gi, gd = anchor_terms(z1[:16], z2[:16], tau=0.1)
    q_raw, gi_raw, gd_raw = anchor_terms(z1[:16], z2[:16], tau=0.1, projected=False)
    torch.testing.assert_close(st.g_dcl[:32], gd)
    torch.testing.assert_close(st.g_infonce[:32], gi)
    torch.testing.assert_close(st.g_dcl_raw[:32], gd_raw)
    torch.testing.assert_close(st.g_infonce_raw[:32], gi_raw)
    assert bool((st.g_dcl <= st.g_dcl_raw + 1e-6).all())  # a projection never lengthens


def test_grad_curve_means_per_batch_size():
    pool = synthetic_pool(pos_sim=0.5, neg_sim=0.1, num_pairs=256)
    sizes, gi, gd = grad_curve(*pool, tau=0.1, batch_sizes=(1, 8, 64, 512), seed=2)
    assert sizes == [8, 64]  # 1 and 512 do not fit a pool of 256
    st = qb_stats(*pool, tau=0.1, batch_size=64, generator=gen(2))
    assert (gi[1], gd[1]) == (pytest.approx(st.mean_g_infonce), pytest.approx(st.mean_g_dcl))
    assert all(a < b for a, b in zip(gi, gd))


def test_default_cosines_range_and_seed():
    c = default_cosines(200, seed=1)
    assert c.dtype == torch.float64 and c.shape == (200,)
    assert 0.2 <= c.min().item() and c.max().item() <= 0.95
    assert torch.equal(c, default_cosines(200, seed=1))
    assert not torch.equal(c, default_cosines(200, seed=2))


def test_project_tangent_is_orthogonal_and_idempotent():
    z = unit(6, 4, 5)
    g = torch.randn(6, 4, generator=gen(6), dtype=torch.float64)
    t = project_tangent(g, z)
    torch.testing.assert_close((t * z).sum(dim=1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(project_tangent(t, z), t)
