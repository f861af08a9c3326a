"""The two-rank simulation of dcl_teach.ranks: DCL with every gradient path, and what each
faulty gather loses.

Gradients are checked against the coefficients of Eq. (4.4) (notebook 04); the simulation is
checked against two real gloo processes.
"""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcl_teach import ranks
from dcl_teach.distributed import gather_with_grad
from dcl_teach.losses import dcl
from tests.test_bugs import _unit


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
    sim = ranks.dcl_two_ranks(*leaves, tau=0.2, normalize=False)
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
    loss = ranks.dcl_two_ranks(*leaves, tau=0.2, normalize=False, world=world, grad_through="none")
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
    loss = ranks.dcl_two_ranks(*leaves, tau=0.2, normalize=False, grad_through="own")
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
        ranks.dcl_two_ranks_all_gather(z, z)
    with pytest.raises(ValueError, match="world must be a positive int"):
        ranks.dcl_two_ranks(z, z, world=0)
    with pytest.raises(ValueError, match="grad_through must be one of"):
        ranks.dcl_two_ranks(z, z, world=1, grad_through="some")
    with pytest.raises(ValueError, match="gathered views of n \\* W rows"):
        ranks.rank_loss(z, z, z[:2], z[:2], rank=0)
    with pytest.raises(ValueError, match="rank"):
        ranks.rank_loss(z, z, z, z, rank=1)


WORLD = 2
GATHERS = {
    "none": ranks.all_gather_plain,
    "own": ranks.all_gather_own_rows,
    "all": gather_with_grad,
}


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
            loss = ranks.rank_loss(z1, z2, g1, g2, rank=rank, tau=0.2)
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
        loss = ranks.dcl_two_ranks(*leaves, tau=0.2, normalize=False, grad_through=mode)
        expected[name] = torch.autograd.grad(loss, leaves)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["none_requires_grad"] is False and got["all_requires_grad"] is True
        sl = slice(rank * 2, (rank + 1) * 2)
        for name in GATHERS:
            for g, e in zip(got[name], expected[name]):
                torch.testing.assert_close(g, e[sl], rtol=1e-10, atol=1e-13)
