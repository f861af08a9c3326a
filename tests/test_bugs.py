"""Each broken loss of dcl_teach.bugs is wrong in exactly the stated way and right elsewhere.

References are float64 loops over anchors (tests/reference.py style). Broken loss 4's two-rank
simulation is tested in tests/test_ranks.py, the tests that catch the bugs in
tests/test_bug_checks.py.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from dcl_teach import bug_checks, bugs, ranks
from dcl_teach.losses import dcl

SIZES = [(2, 3), (3, 5), (6, 4)]
TAUS = [0.1, 0.5]


def _batch(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z1, z2


def _unit(n, d, seed=0):
    z1, z2 = _batch(n, d, seed)
    return F.normalize(z1, dim=1), F.normalize(z2, dim=1)


def _blocks(z1, z2, tau):
    """Per anchor (in the order of cat([z1, z2])): s_pos, s_self, same-view and cross-view
    negative logits, by a loop over anchors."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    out = []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        view = range(0, n) if a < n else range(n, 2 * n)
        other = range(n, 2 * n) if a < n else range(0, n)
        same = torch.stack([z[a] @ z[j] / tau for j in view if j != a])
        cross = torch.stack([z[a] @ z[j] / tau for j in other if j != p])
        out.append((z[a] @ z[p] / tau, z[a] @ z[a] / tau, same, cross))
    return out


def _dcl_loop(z1, z2, tau):
    return torch.stack(
        [-sp + torch.cat([same, cross]).logsumexp(0) for sp, _, same, cross in _blocks(z1, z2, tau)]
    )


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("tau", TAUS)
def test_reference_is_dcl_loop(n, d, tau):
    z1, z2 = _batch(n, d)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    torch.testing.assert_close(
        bugs.dcl_reference(z1, z2, tau=tau), _dcl_loop(u1, u2, tau).mean(), rtol=1e-12, atol=1e-12
    )


# --- 1. two logsumexps ------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("tau", TAUS)
def test_two_logsumexps_multiplies_the_block_sums(n, d, tau):
    z1, z2 = _batch(n, d)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    blocks = _blocks(u1, u2, tau)
    loop = torch.stack(
        [-sp + same.logsumexp(0) + cross.logsumexp(0) for sp, _, same, cross in blocks]
    )
    got = bugs.dcl_two_logsumexps(z1, z2, tau=tau)
    torch.testing.assert_close(got, loop.mean(), rtol=1e-12, atol=1e-12)
    # = DCL + log(S C / (S + C)) per anchor
    gap = torch.stack(
        [
            same.logsumexp(0) + cross.logsumexp(0) - torch.cat([same, cross]).logsumexp(0)
            for _, _, same, cross in blocks
        ]
    )
    torch.testing.assert_close(got - dcl(z1, z2, tau=tau), gap.mean(), rtol=1e-10, atol=1e-12)


def test_two_logsumexps_agrees_with_dcl_only_by_coincidence():
    # aligned-orthogonal: S = C = N - 1, so S C = S + C exactly when N = 3
    for n in (2, 3, 4):
        z = torch.eye(5, dtype=torch.float64)[:n]
        same = math.isclose(
            bugs.dcl_two_logsumexps(z, z, tau=0.3).item(), dcl(z, z, tau=0.3).item()
        )
        assert same == (n == 3)
    # identical embeddings: 1/tau + 2 log(N - 1), never log(2N - 2) here
    z = torch.ones(4, 3, dtype=torch.float64)
    for tau in (0.1, 1.0):
        value = bugs.dcl_two_logsumexps(z, z, tau=tau).item()
        assert math.isclose(value, 1 / tau + 2 * math.log(3), rel_tol=1e-12)


@pytest.mark.parametrize("loss", list(bugs.BROKEN.values()), ids=list(bugs.BROKEN))
def test_invariances_hold_for_every_bug_but_the_norm(loss):
    z1, z2 = _batch(6, 4, seed=3)
    base = loss(z1, z2, tau=0.2)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.testing.assert_close(loss(z2, z1, tau=0.2), base, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss(z1[perm], z2[perm], tau=0.2), base, rtol=1e-10, atol=1e-12)
    scaled = loss(3.0 * z1, 0.25 * z2, tau=0.2)
    if loss is bugs.dcl_forgot_normalize:
        assert not torch.isclose(scaled, base)
    else:
        torch.testing.assert_close(scaled, base, rtol=1e-10, atol=1e-12)


# --- 2. eps mask --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("tau", TAUS)
def test_eps_mask_keeps_self_and_positive_in_the_denominator(n, d, tau):
    z1, z2 = _batch(n, d)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    loop = torch.stack(
        [
            -sp + torch.cat([torch.stack([ss, sp]), same, cross]).logsumexp(0)
            for sp, ss, same, cross in _blocks(u1, u2, tau)
        ]
    )
    torch.testing.assert_close(
        bugs.dcl_eps_mask(z1, z2, tau=tau), loop.mean(), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("n,d", SIZES)
def test_soft_mask_with_a_large_negative_value_is_dcl(n, d):
    z1, z2 = _batch(n, d)
    exact = dcl(z1, z2, tau=0.1)
    torch.testing.assert_close(
        bugs.soft_masked_dcl(z1, z2, tau=0.1, mask_value=float("-inf")),
        exact,
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(bugs.soft_masked_dcl(z1, z2, tau=0.1), exact, rtol=1e-12, atol=1e-12)


def test_eps_mask_never_goes_below_zero_where_dcl_does():
    g = torch.Generator().manual_seed(5)
    lowest_eps, lowest_dcl = math.inf, math.inf
    for _ in range(50):
        z1 = torch.randn(4, 3, generator=g, dtype=torch.float64)
        z2 = z1 + 0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)
        lowest_eps = min(lowest_eps, bugs.dcl_eps_mask(z1, z2, tau=0.1).item())
        lowest_dcl = min(lowest_dcl, dcl(z1, z2, tau=0.1).item())
    assert lowest_eps > 0 > lowest_dcl


# --- 3. forgot normalize ------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
def test_forgot_normalize_is_dcl_of_the_raw_rows(n, d):
    z1, z2 = _batch(n, d)
    before = (z1.clone(), z2.clone())
    got = bugs.dcl_forgot_normalize(z1, z2, tau=0.5)
    torch.testing.assert_close(got, _dcl_loop(z1, z2, 0.5).mean(), rtol=1e-12, atol=1e-12)
    assert torch.equal(z1, before[0]) and torch.equal(z2, before[1])  # nothing done in place
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    torch.testing.assert_close(
        bugs.dcl_forgot_normalize(u1, u2, tau=0.5), dcl(u1, u2, tau=0.5), rtol=1e-12, atol=1e-12
    )


def test_forgot_normalize_rewards_growing_norms():
    z1, z2 = _unit(4, 3)
    values = [bugs.dcl_forgot_normalize(c * z1, c * z1, tau=0.5).item() for c in (1.0, 2.0, 4.0)]
    assert values[0] > values[1] > values[2]  # same directions, lower loss
    assert len({round(dcl(c * z1, c * z1, tau=0.5).item(), 10) for c in (1.0, 2.0, 4.0)}) == 1


# --- 5. positive on the diagonal ----------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
@pytest.mark.parametrize("tau", TAUS)
def test_positive_on_diagonal_uses_the_anchor_itself(n, d, tau):
    z1, z2 = _batch(n, d)
    u1, u2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    loop = torch.stack(
        [-ss + torch.cat([same, cross]).logsumexp(0) for _, ss, same, cross in _blocks(u1, u2, tau)]
    )
    torch.testing.assert_close(
        bugs.dcl_positive_on_diagonal(z1, z2, tau=tau), loop.mean(), rtol=1e-12, atol=1e-12
    )
    # right whenever the two views coincide (then s[a, a] = s[a, pos(a)])
    torch.testing.assert_close(
        bugs.dcl_positive_on_diagonal(z1, z1, tau=tau), dcl(z1, z1, tau=tau), rtol=1e-12, atol=1e-12
    )


def test_positive_on_diagonal_never_pulls_a_pair_together():
    z1, z2 = _unit(4, 5, seed=2)
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    g1, g2 = torch.autograd.grad(bugs.dcl_positive_on_diagonal(*leaves, tau=0.2), leaves)
    ref = [t.clone().requires_grad_() for t in (z1, z2)]
    z = torch.cat(ref)
    s = z @ z.T / 0.2
    mask = torch.ones(8, 8, dtype=torch.bool)
    rows = torch.arange(8)
    mask[rows, rows] = False
    mask[rows, (rows + 4) % 8] = False
    uniform_only = s.masked_fill(~mask, float("-inf")).logsumexp(1).mean()
    e1, e2 = torch.autograd.grad(uniform_only, ref)
    # with normalisation inside, s[a, a] is constant: the gradient is the negatives' push only
    u = torch.cat([z1, z2])
    torch.testing.assert_close(
        torch.cat([g1, g2]),
        torch.cat([e1, e2]) - (torch.cat([e1, e2]) * u).sum(1, keepdim=True) * u,
        rtol=1e-10,
        atol=1e-12,
    )


# --- 6. sum, not mean ---------------------------------------------------------------------------


@pytest.mark.parametrize("n,d", SIZES)
def test_summed_is_2n_times_the_mean_in_value_and_gradient(n, d):
    z1, z2 = _batch(n, d)
    a = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    b = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    summed, mean = bugs.dcl_summed(*a, tau=0.2), dcl(*b, tau=0.2)
    torch.testing.assert_close(summed, 2 * n * mean, rtol=1e-12, atol=1e-12)
    for gs, gm in zip(torch.autograd.grad(summed, a), torch.autograd.grad(mean, b)):
        torch.testing.assert_close(gs, 2 * n * gm, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("loss", list(bugs.BROKEN.values()), ids=list(bugs.BROKEN))
def test_broken_losses_reject_bad_input_like_dcl(loss):
    with pytest.raises(ValueError, match="at least 2 pairs"):
        loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="tau"):
        loss(torch.ones(2, 3), torch.ones(2, 3), tau=0.0)
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.ones(2, 3), torch.ones(2, 4))


# --- moved out, still importable from here (notebook 09 imports them from dcl_teach.bugs) -----

MOVED = {
    ranks: [
        "GRAD_THROUGH",
        "all_gather_own_rows",
        "all_gather_plain",
        "dcl_two_ranks",
        "dcl_two_ranks_all_gather",
        "rank_loss",
    ],
    bug_checks: [
        "Loss",
        "TESTS",
        "grade_test",
        "passes_aligned_orthogonal",
        "passes_anti_aligned",
        "passes_below_zero",
        "passes_bounds",
        "passes_gradient",
        "passes_identical",
        "passes_rescaling",
        "passes_symmetries",
    ],
}


@pytest.mark.parametrize(
    "module,name",
    [(module, name) for module, names in MOVED.items() for name in names],
    ids=[name for names in MOVED.values() for name in names],
)
def test_the_moved_names_are_re_exported(module, name):
    assert getattr(bugs, name) is getattr(module, name)
