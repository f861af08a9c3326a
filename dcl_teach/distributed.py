"""Negatives from every rank: an all-gather that carries gradients back correctly.

Under data parallelism each rank holds ``n`` pairs. The losses gather the embeddings of all
ranks so that every anchor sees the ``2nW - 2`` negatives of the global batch. The gather must
be differentiable: the gradient that rank ``r``'s loss sends to rank ``q``'s embeddings has to
reach rank ``q``. :func:`gather_with_grad` does that by summing the incoming gradients of all
ranks (an all-reduce) before each rank keeps its own slice. Returning only the local slice,
without the sum, is the bug several libraries shipped for years.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` when ``torch.distributed`` is not initialised.

    Example:
        >>> world_info()
        (0, 1)

    Taught in notebook 06.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W * n, D)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss contributes to every rank's slice
        n = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * n : (rank + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, with gradients flowing back to each rank.

    Args:
        x: (n, D) this rank's tensor; every rank must hold the same shape.

    Returns:
        (W * n, D) the rows of rank 0, then rank 1, ...; ``x`` itself when not distributed.

    Raises:
        ValueError: if the ranks hold tensors of different shapes.

    Example:
        >>> gather_with_grad(torch.ones(2, 3)).shape
        torch.Size([2, 3])

    Taught in notebook 06.
    """
    _, world = world_info()
    if world == 1:
        return x
    check_same_shape(x)
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, without gradient (``x`` when alone)."""
    _, world = world_info()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts)


def check_same_shape(x: torch.Tensor) -> None:
    """Raise a clear error when the ranks hold differently shaped batches."""
    shape = torch.tensor(list(x.shape), dtype=torch.int64, device=x.device)  # (ndim,)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    if any(not torch.equal(s, shape) for s in shapes):
        seen = [tuple(s.tolist()) for s in shapes]
        raise ValueError(
            f"gather_distributed needs the same batch shape on every rank, got {seen} "
            "(use drop_last=True or equal shards)"
        )


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Average of a detached tensor over all ranks (``x`` when not distributed)."""
    _, world = world_info()
    if world == 1:
        return x.detach()
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world
