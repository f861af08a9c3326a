"""Gathered negatives across 2 CPU processes (gloo) must reproduce one process with the whole batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcl_teach.distributed import gather_with_grad, world_info
from dcl_teach.losses import LOSSES

pytestmark = pytest.mark.slow  # real gloo process groups, spawned

WORLD = 2
N_LOCAL = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(WORLD * N_LOCAL, 6, generator=g, dtype=torch.float64)
    z2 = z1 + 0.6 * torch.randn(WORLD * N_LOCAL, 6, generator=g, dtype=torch.float64)
    z2[:N_LOCAL] *= 3.0  # rank-asymmetric: rank 0's second view has other norms and angles
    z2[:N_LOCAL, 0] += 2.0
    return z1, z2


CASES = [(k, r) for k in ("infonce", "dcl", "dclw") for r in ("mean", "sum")]


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for kind, reduction in CASES:
            _one_case(rank, kind, reduction, out_dir)
    finally:
        dist.destroy_process_group()


def _one_case(rank, kind, reduction, out_dir):
    z1_all, z2_all = _global_batch()
    sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
    z1 = z1_all[sl].clone().requires_grad_()
    z2 = z2_all[sl].clone().requires_grad_()
    loss = LOSSES[kind](z1, z2, tau=0.2, reduction=reduction, gather_distributed=True)
    loss.backward()
    # DistributedDataParallel averages gradients over ranks; do the same for the check
    g1, g2 = z1.grad / WORLD, z2.grad / WORLD

    # and a real DDP model on top, to check parameter gradients end to end
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x1, x2 = z1_all[sl], z2_all[sl]
    LOSSES[kind](ddp(x1), ddp(x2), tau=0.2, reduction=reduction, gather_distributed=True).backward()
    torch.save(
        {"loss": loss.detach(), "g1": g1, "g2": g2, "w": model.weight.grad, "b": model.bias.grad},
        os.path.join(out_dir, f"{kind}-{reduction}-rank{rank}.pt"),
    )


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("kind,reduction", CASES)
def test_two_ranks_equal_one_process(kind, reduction, two_rank_results):
    z1_all, z2_all = _global_batch()
    z1, z2 = z1_all.clone().requires_grad_(), z2_all.clone().requires_grad_()
    loss = LOSSES[kind](z1, z2, tau=0.2, reduction=reduction)
    loss.backward()
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).double()
    LOSSES[kind](model(z1_all), model(z2_all), tau=0.2, reduction=reduction).backward()

    for rank in range(WORLD):
        got = torch.load(two_rank_results / f"{kind}-{reduction}-rank{rank}.pt")
        sl = slice(rank * N_LOCAL, (rank + 1) * N_LOCAL)
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got["g1"], z1.grad[sl], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got["g2"], z2.grad[sl], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got["w"], model.weight.grad, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(got["b"], model.bias.grad, rtol=1e-10, atol=1e-13)


def _uneven_worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        gather_with_grad(torch.zeros(3 + rank, 2))
    except ValueError as err:
        (open(os.path.join(out_dir, f"err{rank}.txt"), "w")).write(str(err))
    finally:
        dist.destroy_process_group()


def test_uneven_shards_raise_a_clear_error(tmp_path):
    mp.spawn(_uneven_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        msg = (tmp_path / f"err{rank}.txt").read_text()
        assert "same batch shape on every rank" in msg and "(3, 2)" in msg and "(4, 2)" in msg


def test_single_process_gather_is_identity():
    assert world_info() == (0, 1)
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x
