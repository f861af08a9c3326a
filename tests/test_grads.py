import pytest
import torch
import torch.nn.functional as F
from reference import loop_coupling

from dcl_teach.grads import (
    anchor_gradient,
    coupling,
    dcl_grad,
    dclw_grad,
    info_nce_grad,
    project_tangent,
    vmf_weights,
)
from dcl_teach.losses import dcl, dclw, info_nce

GRADS = [(info_nce, info_nce_grad, {}), (dcl, dcl_grad, {}), (dclw, dclw_grad, {"sigma": 0.4})]


def unit_views(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return F.normalize(z1, dim=1), F.normalize(z2, dim=1)


@pytest.mark.parametrize("loss,grad,kw", GRADS)
@pytest.mark.parametrize("n,d", [(2, 2), (6, 5), (20, 16)])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
def test_closed_form_gradient_matches_autograd(loss, grad, kw, n, d, tau):
    z1, z2 = unit_views(n, d, seed=n * d)
    z1r, z2r = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    auto = torch.autograd.grad(loss(z1r, z2r, tau=tau, normalize=False, **kw), (z1r, z2r))
    mine = grad(z1, z2, tau=tau, **kw)
    for a, b in zip(mine, auto):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,tau", [(3, 0.1), (8, 0.5), (16, 0.05)])
def test_coupling_matches_loop_reference_and_lies_in_unit_interval(n, tau):
    z1, z2 = unit_views(n, 4, seed=7)
    q = coupling(z1, z2, tau=tau)
    torch.testing.assert_close(q, loop_coupling(z1, z2, tau=tau), rtol=1e-10, atol=1e-12)
    assert torch.all((q > 0) & (q < 1))


@pytest.mark.parametrize("n,tau", [(4, 0.1), (9, 0.3), (5, 0.02)])
def test_proposition_1_every_infonce_term_carries_q(n, tau):
    """Proposition 1: per anchor, the InfoNCE gradient w.r.t. the anchor, the positive and every
    negative is q_B times the DCL gradient (the DCL gradient is InfoNCE's with q_B removed)."""
    z1, z2 = unit_views(n, 3, seed=n)
    z = torch.cat([z1, z2]).requires_grad_()
    per_info = info_nce(z[:n], z[n:], tau=tau, normalize=False, reduction="none")
    per_dcl = dcl(z[:n], z[n:], tau=tau, normalize=False, reduction="none")
    q = coupling(z1, z2, tau=tau)
    for a in range(2 * n):
        (g_info,) = torch.autograd.grad(per_info[a], z, retain_graph=True)  # (2N, D): all terms
        (g_dcl,) = torch.autograd.grad(per_dcl[a], z, retain_graph=True)
        torch.testing.assert_close(g_info, q[a] * g_dcl, rtol=1e-9, atol=1e-13)
        # and the terms are really there: anchor, positive and negatives all move
        assert (g_dcl.norm(dim=1) > 0).sum() == 2 * n


def test_q_near_zero_silences_a_far_positive():
    # positive at cosine 0.2 (far), negatives at cosine -1 (much farther), small tau
    z1 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.2, 0.98], [-0.2, -0.98]], dtype=torch.float64)
    q = coupling(z1, z2, tau=0.05)
    # q ~ exp(-(0.2 - (-0.2)) / 0.05) = exp(-8): the nearest negative sits at cosine -0.2
    assert q[0].item() == pytest.approx(torch.e**-8, rel=0.01)
    assert q[0] < 1e-3
    g_info = info_nce_grad(F.normalize(z1, dim=1), F.normalize(z2, dim=1), tau=0.05)
    g_dcl = dcl_grad(F.normalize(z1, dim=1), F.normalize(z2, dim=1), tau=0.05)
    assert g_info[0].norm() < 1e-3 * g_dcl[0].norm()


def test_vmf_weights_average_to_one_and_go_negative_for_outliers():
    g = torch.Generator().manual_seed(0)
    z1, z2 = unit_views(50, 8, seed=1)
    w = vmf_weights(z1, z2, sigma=0.5)
    assert w.mean().item() == pytest.approx(1.0, abs=1e-12)
    # one pair at cosine 1 among pairs at cosine 0 (N = 256): w ~ -5.2 (reference notes, sect. 2)
    e = torch.eye(2, dtype=torch.float64)
    a = e[0].repeat(256, 1)
    b = e[1].repeat(256, 1)
    b[0] = e[0]
    w = vmf_weights(a, b, sigma=0.5)
    assert w[0].item() == pytest.approx(2 - 256 * torch.e**2 / (torch.e**2 + 255), rel=1e-12)
    assert w[0] < -5
    del g


def test_dclw_with_equal_pairs_has_the_dcl_gradient():
    z1, z2 = unit_views(5, 3, seed=2)
    z2 = z1.clone()  # every pair at cosine 1: all weights 1
    for a, b in zip(dclw_grad(z1, z2, tau=0.3), dcl_grad(z1, z2, tau=0.3)):
        torch.testing.assert_close(a, b)


def test_bad_input():
    with pytest.raises(ValueError, match="N=1"):
        coupling(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="tau"):
        info_nce_grad(torch.randn(3, 3), torch.randn(3, 3), tau=0.0)
    with pytest.raises(ValueError, match="sigma"):
        vmf_weights(torch.randn(3, 3), torch.randn(3, 3), sigma=-1)


@pytest.mark.parametrize("n,d,tau", [(2, 2, 1.0), (5, 4, 0.1), (9, 8, 0.3)])
def test_anchor_gradient_is_each_anchors_own_gradient(n, d, tau):
    """Row a of anchor_gradient is d L_a^DCL / d z_a by autograd; q_a times it is InfoNCE's."""
    z1, z2 = unit_views(n, d, seed=n + d)
    q, g = anchor_gradient(z1, z2, tau=tau)
    torch.testing.assert_close(q, coupling(z1, z2, tau=tau), rtol=1e-12, atol=1e-14)
    z = torch.cat([z1, z2]).requires_grad_()
    per_dcl = dcl(z[:n], z[n:], tau=tau, normalize=False, reduction="none")
    per_info = info_nce(z[:n], z[n:], tau=tau, normalize=False, reduction="none")
    for a in range(2 * n):
        (g_dcl,) = torch.autograd.grad(per_dcl[a], z, retain_graph=True)
        (g_info,) = torch.autograd.grad(per_info[a], z, retain_graph=True)
        torch.testing.assert_close(g[a], g_dcl[a], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(q[a] * g[a], g_info[a], rtol=1e-10, atol=1e-12)


def test_anchor_gradient_batched_equals_one_batch_at_a_time():
    z1 = F.normalize(torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(1)), dim=-1)
    z2 = F.normalize(torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(2)), dim=-1)
    q, g = anchor_gradient(z1, z2, tau=0.2)
    assert q.shape == (3, 12) and g.shape == (3, 12, 4)
    for b in range(3):
        qb, gb = anchor_gradient(z1[b], z2[b], tau=0.2)
        torch.testing.assert_close(q[b], qb)
        torch.testing.assert_close(g[b], gb)


def test_project_tangent_matches_the_normalisation_jacobian():
    """(I - z z^T) g is what autograd sends through z = r / |r| at |r| = 1."""
    g = torch.Generator().manual_seed(3)
    r = F.normalize(torch.randn(5, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    upstream = torch.randn(5, 4, generator=g, dtype=torch.float64)
    (through,) = torch.autograd.grad((F.normalize(r, dim=1) * upstream).sum(), r)
    torch.testing.assert_close(project_tangent(upstream, r.detach()), through)
    with pytest.raises(ValueError, match="same shape"):
        project_tangent(upstream, r.detach()[:, :3])


def test_anchor_gradient_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        anchor_gradient(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="N >= 2"):
        anchor_gradient(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="tau"):
        anchor_gradient(torch.randn(4, 3), torch.randn(4, 3), tau=-0.1)
