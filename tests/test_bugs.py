"""Each broken loss of dcl_teach.bugs is wrong in exactly the stated way and right elsewhere.

References are float64 loops over anchors (tests/reference.py style); the two-rank simulation is
checked against two real gloo processes.
"""

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dcl_teach import bugs
from dcl_teach.distributed import gather_with_grad
from dcl_teach.exercises import Verdict, check
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


# --- 4. all_gather without gradient -------------------------------------------------------------


def _coefficients(z, n, tau):
    """C[a, j] = dL_a/ds[a, j] of DCL (notebook 04, Eq. 4.4)."""
    s = z @ z.T / tau
    neg = torch.ones(2 * n, 2 * n, dtype=torch.bool)
    rows = torch.arange(2 * n)
    pos = (rows + n) % (2 * n)
    neg[rows, rows] = False
    neg[rows, pos] = False
    c = torch.softmax(s.masked_fill(~neg, float("-inf")), dim=1)
    c[rows, pos] -= 1
    return c


@pytest.mark.parametrize("n", [2, 4, 6])
def test_two_ranks_with_gradient_is_dcl(n):
    z1, z2 = _unit(n, 5, seed=n)
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    sim = bugs.dcl_two_ranks(*leaves, tau=0.2, normalize=False)
    ref_leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    ref = dcl(*ref_leaves, tau=0.2, normalize=False)
    torch.testing.assert_close(sim, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(sim, leaves), torch.autograd.grad(ref, ref_leaves)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("n", [2, 4, 6])
@pytest.mark.parametrize("world", [1, 2])
def test_all_gather_keeps_only_the_anchor_term(n, world):
    z1, z2 = _unit(n, 5, seed=n)
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    loss = bugs.dcl_two_ranks(*leaves, tau=0.2, normalize=False, world=world, grad_through="none")
    torch.testing.assert_close(loss, dcl(z1, z2, tau=0.2, normalize=False), rtol=1e-12, atol=1e-12)
    got = torch.cat(torch.autograd.grad(loss, leaves))
    z = torch.cat([z1, z2])
    c = _coefficients(z, n, 0.2)
    anchor_term = c @ z / (0.2 * 2 * n)  # the first sum of Eq. (4.4): k as an anchor only
    torch.testing.assert_close(got, anchor_term, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(got, anchor_term + c.T @ z / (0.2 * 2 * n))


def test_own_rows_only_lose_the_other_ranks_candidate_term():
    n, world = 4, 2
    z1, z2 = _unit(n, 5, seed=9)
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    loss = bugs.dcl_two_ranks(*leaves, tau=0.2, normalize=False, grad_through="own")
    got = torch.cat(torch.autograd.grad(loss, leaves))
    z = torch.cat([z1, z2])
    c = _coefficients(z, n, 0.2)
    rank_of = torch.arange(2 * n) % n // (n // world)  # owner of each stacked row
    same_rank = rank_of[:, None] == rank_of[None, :]  # (2N, 2N) anchor and candidate together
    expected = (c @ z + (c * same_rank).T @ z) / (0.2 * 2 * n)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-13)


def test_two_ranks_rejects_uneven_splits():
    z = torch.eye(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="do not split evenly over 2 ranks"):
        bugs.dcl_two_ranks_all_gather(z, z)
    with pytest.raises(ValueError, match="world must be a positive int"):
        bugs.dcl_two_ranks(z, z, world=0)
    with pytest.raises(ValueError, match="grad_through must be one of"):
        bugs.dcl_two_ranks(z, z, world=1, grad_through="some")
    with pytest.raises(ValueError, match="gathered views of n \\* W rows"):
        bugs.rank_loss(z, z, z[:2], z[:2], rank=0)
    with pytest.raises(ValueError, match="rank"):
        bugs.rank_loss(z, z, z, z, rank=1)


WORLD = 2
GATHERS = {"none": bugs.all_gather_plain, "own": bugs.all_gather_own_rows, "all": gather_with_grad}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        z1_all, z2_all = _unit(2 * WORLD, 5, seed=7)
        sl = slice(rank * 2, (rank + 1) * 2)
        result = {}
        for name, gather in GATHERS.items():
            z1 = z1_all[sl].clone().requires_grad_()
            z2 = z2_all[sl].clone().requires_grad_()
            g1, g2 = gather(z1), gather(z2)
            result[f"{name}_requires_grad"] = g1.requires_grad
            loss = bugs.rank_loss(z1, z2, g1, g2, rank=rank, tau=0.2)
            loss.backward()
            # DistributedDataParallel averages the ranks' gradients
            result[name] = (z1.grad / WORLD, z2.grad / WORLD)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_simulation_equals_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    z1, z2 = _unit(2 * WORLD, 5, seed=7)
    expected = {}
    for name, mode in (("none", "none"), ("own", "own"), ("all", "all")):
        leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
        loss = bugs.dcl_two_ranks(*leaves, tau=0.2, normalize=False, grad_through=mode)
        expected[name] = torch.autograd.grad(loss, leaves)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["none_requires_grad"] is False and got["all_requires_grad"] is True
        sl = slice(rank * 2, (rank + 1) * 2)
        for name in GATHERS:
            for g, e in zip(got[name], expected[name]):
                torch.testing.assert_close(g, e[sl], rtol=1e-10, atol=1e-13)


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


# --- the tests and the grading ------------------------------------------------------------------

CAUGHT = {  # which reference test catches which bug (it fails the broken loss)
    "two logsumexps": {"identical", "aligned-orthogonal", "gradient", "anti-aligned"},
    "eps mask": {"identical", "aligned-orthogonal", "below zero", "gradient", "anti-aligned"},
    "forgot normalize": {"rescaling", "bounds"},
    "all_gather": {"gradient"},
    "positive on diagonal": {"gradient", "anti-aligned"},
    "sum, not mean": {"identical", "aligned-orthogonal", "gradient", "anti-aligned", "bounds"},
}


@pytest.mark.parametrize("test_name", list(bugs.TESTS))
def test_every_reference_test_passes_dcl(test_name):
    assert bugs.TESTS[test_name](bugs.dcl_reference) is True


@pytest.mark.parametrize("bug", list(bugs.BROKEN))
def test_which_test_catches_which_bug(bug):
    caught = {name for name, test in bugs.TESTS.items() if not test(bugs.BROKEN[bug])}
    assert caught == CAUGHT[bug]


@pytest.mark.parametrize("loss", list(bugs.BROKEN.values()), ids=list(bugs.BROKEN))
def test_broken_losses_reject_bad_input_like_dcl(loss):
    with pytest.raises(ValueError, match="at least 2 pairs"):
        loss(torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="tau"):
        loss(torch.ones(2, 3), torch.ones(2, 3), tau=0.0)
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.ones(2, 3), torch.ones(2, 4))


def _stub(loss):
    raise NotImplementedError


def _raises(loss):
    raise RuntimeError("boom")


@pytest.mark.parametrize(
    "test,status,words",
    [
        (_stub, "missing", "not yet implemented"),
        (_raises, "error", "on the broken loss, your test raised RuntimeError: boom"),
        (lambda loss: True, "wrong", "passes the broken loss (it must fail it)"),
        (lambda loss: False, "wrong", "fails the correct loss (it must pass it)"),
        (
            lambda loss: not bugs.passes_identical(loss),
            "wrong",
            "passes the broken loss (it must fail it) and fails",
        ),
        (bugs.passes_identical, "correct", "fails the broken loss and passes the correct one"),
        (lambda loss: None, "wrong", "a test must return True or False; expected a tensor"),
    ],
)
def test_grade_test(test, status, words, capsys):
    verdict = bugs.grade_test(
        check("9.1", test, bugs.dcl_two_logsumexps, expected=False, quiet=True),
        check("9.1", test, bugs.dcl_reference, expected=True, quiet=True),
    )
    assert verdict.status == status and words in verdict.message
    assert capsys.readouterr().out.strip() == verdict.message


def test_grade_test_rejects_two_exercises():
    with pytest.raises(ValueError, match="9.1 and 9.2"):
        bugs.grade_test(Verdict("9.1", "correct", ""), Verdict("9.2", "correct", ""))
