"""Tests for dcl_teach.geometry: alignment, uniformity, the loss split, the sphere optimiser."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from mpl_toolkits.mplot3d.art3d import Line3DCollection

from dcl_teach.geometry import (
    alignment,
    compare_on_sphere,
    explore_sphere,
    loss_terms,
    optimise_on_sphere,
    render_sphere,
    run_measures,
    uniformity,
)
from dcl_teach.grads import coupling
from dcl_teach.losses import dcl, info_nce
from dcl_teach.widgets import figure_png

F64 = torch.float64


def views(
    n: int, d: int, *, seed: int = 0, noise: float = 0.7
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=F64), dim=1)  # (N, D)
    z2 = F.normalize(z1 + noise * torch.randn(n, d, generator=g, dtype=F64), dim=1)  # (N, D)
    return z1, z2


# --- loop references (float64) --------------------------------------------------------------


def alignment_loop(z1, z2, alpha):
    return sum(float((z1[i] - z2[i]).norm()) ** alpha for i in range(len(z1))) / len(z1)


def uniformity_loop(z, t):
    pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
    return math.log(
        sum(math.exp(-t * float((z[i] - z[j]).norm()) ** 2) for i, j in pairs) / len(pairs)
    )


def dcl_terms_loop(z1, z2, tau):
    """Per-anchor (-s_pos, log U_a) one anchor at a time."""
    z = torch.cat([z1, z2])
    m = len(z)
    align, unif = [], []
    for a in range(m):
        p = (a + m // 2) % m
        align.append(-float(z[a] @ z[p]) / tau)
        unif.append(
            math.log(sum(math.exp(float(z[a] @ z[j]) / tau) for j in range(m) if j not in (a, p)))
        )
    return torch.tensor(align, dtype=F64), torch.tensor(unif, dtype=F64)


# --- alignment and uniformity ---------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(1, 3), (5, 2), (17, 8)])
@pytest.mark.parametrize("alpha", [1.0, 2.0, 3.5])
def test_alignment_matches_loop(n, d, alpha):
    z1, z2 = views(n, d, seed=n + d)
    assert alignment(z1, z2, alpha=alpha).item() == pytest.approx(
        alignment_loop(z1, z2, alpha), rel=1e-12
    )


def test_alignment_is_two_minus_two_cosine_and_normalises():
    z1, z2 = views(9, 4, seed=3)
    cos = (z1 * z2).sum(dim=1)
    assert alignment(z1, z2).item() == pytest.approx((2 - 2 * cos).mean().item(), rel=1e-12)
    scale = torch.rand(9, 1, dtype=F64, generator=torch.Generator().manual_seed(1)) * 50 + 0.1
    assert alignment(z1 * scale, z2).item() == pytest.approx(alignment(z1, z2).item(), rel=1e-12)
    assert alignment(z1, z1).item() == 0.0
    assert alignment(z1, -z1).item() == pytest.approx(4.0)


@pytest.mark.parametrize("m,d", [(2, 3), (7, 2), (30, 5)])
@pytest.mark.parametrize("t", [0.5, 2.0, 5.0])
def test_uniformity_matches_loop(m, d, t):
    z, _ = views(m, d, seed=m)
    assert uniformity(z, t=t).item() == pytest.approx(uniformity_loop(z, t), rel=1e-10, abs=1e-12)


def test_uniformity_closed_forms_and_invariances():
    v = F.normalize(torch.tensor([[1.0, 2.0, 2.0]], dtype=F64), dim=1)
    assert uniformity(v.repeat(6, 1)).item() == 0.0  # all alike: the worst value
    assert uniformity(torch.cat([v, -v]), t=3.0).item() == pytest.approx(-12.0)  # distance^2 = 4
    # a regular tetrahedron on S^2: every pairwise cosine -1/3, squared distance 8/3
    tetra = F.normalize(
        torch.tensor([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=F64), dim=1
    )
    assert uniformity(tetra).item() == pytest.approx(-16 / 3, rel=1e-12)
    z, _ = views(12, 4, seed=2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    rot = torch.linalg.qr(torch.randn(4, 4, dtype=F64, generator=torch.Generator().manual_seed(5)))[
        0
    ]
    for other in (z[perm], z @ rot, 3.0 * z):
        assert uniformity(other).item() == pytest.approx(uniformity(z).item(), rel=1e-12)


def test_bad_inputs_raise_clear_errors():
    z1, z2 = views(4, 3)
    with pytest.raises(ValueError, match="alpha"):
        alignment(z1, z2, alpha=0)
    with pytest.raises(ValueError, match="t must be"):
        uniformity(z1, t=-1.0)
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(z1[:1])
    with pytest.raises(ValueError, match="same shape"):
        alignment(z1, z2[:3])
    with pytest.raises(ValueError, match="all-zero"):
        uniformity(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="tau"):
        loss_terms(z1, z2, tau=0.0)


# --- the split of the losses ----------------------------------------------------------------


@pytest.mark.parametrize("n,d", [(2, 3), (8, 5), (33, 16)])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_loss_terms_match_loops_and_rebuild_both_losses(n, d, tau):
    z1, z2 = views(n, d, seed=n * d)
    terms = loss_terms(z1, z2, tau=tau)
    align, unif = dcl_terms_loop(z1, z2, tau)
    torch.testing.assert_close(terms.align, align, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms.uniform, unif, rtol=1e-12, atol=1e-12)
    # Eq. (7.3): DCL = alignment + uniformity; Eq. (7.5): InfoNCE adds the positive's share.
    per_dcl = dcl(z1, z2, tau=tau, reduction="none")
    per_info = info_nce(z1, z2, tau=tau, reduction="none")
    torch.testing.assert_close(terms.align + terms.uniform, per_dcl, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        terms.align + terms.uniform + terms.positive, per_info, rtol=0, atol=1e-12
    )
    # the positive's share is -log q_B, q_B from dcl_teach.grads
    torch.testing.assert_close(
        terms.positive, -coupling(z1, z2, tau=tau).log(), rtol=1e-10, atol=1e-12
    )
    # the alignment term is -cos / tau, shared by both anchors of a pair
    cos = (z1 * z2).sum(dim=1)
    torch.testing.assert_close(terms.align, -torch.cat([cos, cos]) / tau, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_dcl_in_squared_distances(tau):
    """Eq. (7.4): the 1/tau of -s_pos cancels the 1/tau of the Gaussian potential."""
    n = 6
    z1, z2 = views(n, 4, seed=7)
    z = torch.cat([z1, z2])
    per, log_g = [], []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        d2 = [float((z[a] - z[j]).norm()) ** 2 for j in range(2 * n) if j not in (a, p)]
        log_g.append(math.log(sum(math.exp(-x / (2 * tau)) for x in d2) / len(d2)))
        per.append(float((z[a] - z[p]).norm()) ** 2 / (2 * tau) + math.log(2 * n - 2) + log_g[-1])
    torch.testing.assert_close(dcl(z1, z2, tau=tau, reduction="none"), torch.tensor(per, dtype=F64))
    # averaged: alignment (7.1) / (2 tau) + log(2N - 2) + the mean log Gaussian potential
    batch = alignment(z1, z2).item() / (2 * tau) + math.log(2 * n - 2) + sum(log_g) / (2 * n)
    assert dcl(z1, z2, tau=tau).item() == pytest.approx(batch, rel=1e-12)
    # Jensen: the mean of the logs is at most the log of the mean over all negative pairs
    assert sum(log_g) / (2 * n) <= math.log(sum(math.exp(g) for g in log_g) / (2 * n))


@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_q_is_one_minus_exp_of_minus_infonce(tau):
    z1, z2 = views(10, 6, seed=4)
    per_info = info_nce(z1, z2, tau=tau, reduction="none")
    torch.testing.assert_close(
        1 - torch.exp(-per_info), coupling(z1, z2, tau=tau), rtol=1e-10, atol=1e-12
    )


def test_identical_embeddings_closed_forms():
    z = torch.ones(5, 3, dtype=F64)
    terms = loss_terms(z, z, tau=0.25)
    torch.testing.assert_close(terms.align, torch.full((10,), -4.0, dtype=F64))
    torch.testing.assert_close(terms.uniform, torch.full((10,), 4.0 + math.log(8), dtype=F64))
    # InfoNCE = log(2N - 1) exactly: its MI estimate log(2N - 1) - L is 0
    assert (terms.align + terms.uniform + terms.positive).mean().item() == pytest.approx(
        math.log(9)
    )


# --- the sphere optimiser -------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["infonce", "dcl"])
def test_optimiser_stays_on_the_sphere_and_lowers_its_loss(loss):
    threads = torch.get_num_threads()
    run = optimise_on_sphere(6, loss=loss, tau=0.3, steps=60, frames=7)
    assert torch.get_num_threads() == threads  # runs on one thread, restores the caller's count
    assert run.z1.shape == run.z2.shape == (7, 6, 3) and run.steps.tolist() == list(
        range(0, 61, 10)
    )
    norms = torch.cat([run.z1, run.z2]).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    assert run.loss.shape == (60,) and run.loss[-1] < run.loss[0] - 0.1
    assert (run.loss.diff() <= 1e-9).float().mean() > 0.9  # gradient descent: (almost) always down
    # the recorded loss is the package loss of the frame before each step
    assert run.loss[0].item() == pytest.approx(
        (info_nce if loss == "infonce" else dcl)(run.z1[0], run.z2[0], tau=0.3).item(), rel=1e-12
    )
    align, unif = run_measures(run)
    assert align[-1] < align[0] and unif[-1] < unif[0]


def test_both_losses_share_the_start_and_dcl_reaches_the_tetrahedron():
    runs = compare_on_sphere(4, tau=0.2, steps=300)
    torch.testing.assert_close(runs["infonce"].z1[0], runs["dcl"].z1[0], rtol=0, atol=0)
    align, unif = run_measures(runs["dcl"])
    assert align[-1].item() < 1e-8 and unif[-1].item() == pytest.approx(-16 / 3, abs=1e-6)
    # InfoNCE is braked by q_B (tiny at this tau once the pairs close) and is not there yet
    align_i, unif_i = run_measures(runs["infonce"])
    assert align_i[-1] > 1e-3 and unif_i[-1] > unif[-1] + 0.05


def test_optimiser_rejects_bad_arguments():
    for kwargs in ({"loss": "dclw"}, {"steps": 0}, {"frames": 1}, {"tau": -1.0}):
        with pytest.raises(ValueError):
            optimise_on_sphere(4, **kwargs)
    with pytest.raises(ValueError, match="n must be"):
        optimise_on_sphere(1)


# --- figure and explorer --------------------------------------------------------------------


def test_render_sphere_draws_every_point_and_pair():
    before = plt.get_fignums()
    runs = compare_on_sphere(5, tau=0.3, steps=20)
    fig = render_sphere(runs, frame=1)
    assert figure_png(fig)[:4] == b"\x89PNG"  # drawing projects the 3-D segments
    assert len(fig.axes) == 3 and [ax.name for ax in fig.axes] == ["3d", "3d", "rectilinear"]
    for ax, run in zip(fig.axes[:2], runs.values()):
        points = [c for c in ax.collections if c.__class__.__name__ == "Path3DCollection"]
        assert [len(c.get_offsets()) for c in points] == [5, 5]
        (pairs,) = [c for c in ax.collections if c.get_label() == "pairs"]
        assert isinstance(pairs, Line3DCollection)
        assert len(pairs.get_segments()) == 5
        assert "τ = 0.3" in ax.get_title() and f"step {int(run.steps[1])}" in ax.get_title()
    curves = fig.axes[2]
    assert len(curves.lines) == 5  # alignment and uniformity per loss, and the frame marker
    assert curves.lines[-1].get_xdata()[0] == int(runs["dcl"].steps[1])
    align, _ = run_measures(runs["dcl"])
    torch.testing.assert_close(torch.as_tensor(curves.lines[2].get_ydata()), align)
    assert plt.get_fignums() == before


def test_render_sphere_needs_a_run():
    with pytest.raises(ValueError, match="at least one"):
        render_sphere({})
    with pytest.raises(ValueError, match="frame must be"):
        render_sphere(compare_on_sphere(3, tau=0.5, steps=3), frame=4)


def test_explore_sphere_sliders_and_redraw():
    w = explore_sphere(steps=20)
    ctl = {c.description: c for c in w.children if hasattr(c, "value") and c.description}
    assert {"tau", "pairs N", "frame"} <= set(ctl)
    ctl["pairs N"].value = 4
    assert w.result[:4] == b"\x89PNG"
    first = w.result
    ctl["frame"].value = 0
    assert w.result[:4] == b"\x89PNG" and w.result != first
