"""Square tiles of the similarity matrix: which entries each tile excludes, and where it lives.

The symmetric kernel (:mod:`dcl_teach.symmetric`) walks the tiles ``S[I, J]``, ``I <= J``, of
the (K, K) matrix ``S = z z^T / tau`` in square blocks of side ``b``. This module holds what
every such walk needs: the list of tiles, the ``-inf`` fill of the entries a loss leaves out of
its denominator (the anchor itself; for DCL and DCLW also its positive), and a small pool of
scratch buffers that survives between calls, so that a training loop does not pay for fresh
memory at every step.

Taught in notebook 04.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch

#: The symmetric kernel keeps the tiles of its forward pass for the backward pass (instead of
#: recomputing them) when they hold at most this many entries, 32 MiB of float32.
CACHE_ENTRIES = 1 << 23


def tiles(k: int, b: int) -> Iterator[tuple[int, int, int, int]]:
    """The tiles ``I <= J`` of a (K, K) matrix in square blocks of side ``b``, row block first.

    Yields:
        ``(r0, r1, c0, c1)``: the tile ``S[r0:r1, c0:c1]``.

    Example:
        >>> list(tiles(5, 3))
        [(0, 3, 0, 3), (0, 3, 3, 5), (3, 5, 3, 5)]
    """
    for r0 in range(0, k, b):
        r1 = min(r0 + b, k)
        for c0 in range(r0, k, b):
            yield r0, r1, c0, min(c0 + b, k)


def tile_entries(k: int, b: int) -> int:
    """Entries of the tiles ``I <= J`` of a (K, K) matrix in square blocks of side ``b``.

    Example:
        >>> tile_entries(5, 3)  # 3 x 3 + 3 x 2 + 2 x 2
        19
    """
    return sum(min(b, k - r0) * (k - r0) for r0 in range(0, k, b))


def exclude_(s: torch.Tensor, r0: int, c0: int, n: int, decoupled: bool) -> torch.Tensor:
    """Fill the tile ``s = S[r0:, c0:]`` with ``-inf`` where ``S[a, a]`` (and ``S[a, pos(a)]``).

    The excluded entries lie on diagonals of the tile, so they are set through diagonal views:
    no index tensors and no host-device synchronisation. ``pos(a) = a + n`` for ``a < n``, else
    ``a - n`` (:func:`dcl_teach.masks.positive_of` with ``K = 2n``).

    Example:
        >>> exclude_(torch.zeros(4, 4), 0, 0, n=2, decoupled=True)
        tensor([[-inf, 0., -inf, 0.],
                [0., -inf, 0., -inf],
                [-inf, 0., -inf, 0.],
                [0., -inf, 0., -inf]])
    """
    r1, c1 = r0 + s.shape[0], c0 + s.shape[1]
    # anchors a in [lo, hi) have their excluded entry in column a + shift
    spans = [(0, 0, 2 * n)] + ([(n, 0, n), (-n, n, 2 * n)] if decoupled else [])
    for shift, lo, hi in spans:
        a0, a1 = max(r0, c0 - shift, lo), min(r1, c1 - shift, hi)
        if a0 < a1:
            offset = r0 + shift - c0  # column minus row of these entries inside the tile
            start = a0 - r0 if offset >= 0 else a0 + shift - c0
            s.diagonal(offset)[start : start + a1 - a0].fill_(float("-inf"))
    return s


def flat(buf: torch.Tensor, rows: int, cols: int, offset: int = 0) -> torch.Tensor:
    """A contiguous (rows, cols) view of the 1-D ``buf`` from ``offset``, for ``out=`` arguments."""
    return buf[offset : offset + rows * cols].view(rows, cols)


#: Scratch memory kept per thread between calls of the symmetric kernel on the CPU, at most.
#: Freshly allocated megabytes cost a page fault per 4 KiB on first touch (several
#: microseconds each in a virtual machine: more than the arithmetic at N = 256); CUDA has
#: PyTorch's caching allocator for this. :func:`release_workspace` frees it.
WORKSPACE_BYTES = 48 << 20

_workspace = threading.local()


def take(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A 1-D buffer of at least ``numel`` entries of ``like``'s dtype, from this thread's pool."""
    free = getattr(_workspace, "free", None)
    if like.device.type != "cpu" or not free:
        return like.new_empty(numel)
    fits = [i for i, t in enumerate(free) if t.dtype == like.dtype and t.numel() >= numel]
    if not fits:
        return like.new_empty(numel)
    return free.pop(min(fits, key=lambda i: free[i].numel()))  # the smallest that fits


def give(*bufs: torch.Tensor | None) -> None:
    """Return buffers from :func:`take` to this thread's pool (``None`` is skipped; what does
    not fit in :data:`WORKSPACE_BYTES` is freed)."""
    free = getattr(_workspace, "free", None)
    if free is None:
        free = _workspace.free = []
    for buf in bufs:
        if buf is None or buf.device.type != "cpu":
            continue
        held = sum(t.numel() * t.element_size() for t in free)
        if held + buf.numel() * buf.element_size() <= WORKSPACE_BYTES:
            free.append(buf)


def held_buffers() -> list[torch.Tensor]:
    """The buffers this thread's pool holds now (for tests and memory accounting)."""
    return list(getattr(_workspace, "free", None) or [])


def release_workspace() -> None:
    """Free the scratch memory this thread keeps for the symmetric kernel (see
    :data:`WORKSPACE_BYTES`).

    Example:
        >>> release_workspace()
        >>> held_buffers()
        []
    """
    _workspace.free = []
