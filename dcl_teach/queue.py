"""A memory queue of past embeddings: extra negatives beyond the batch (MoCo, He et al., 2020).

The losses of :mod:`dcl_teach.losses` take ``negatives=`` (K, D): K more rows that join every
anchor's denominator. A :class:`MemoryQueue` keeps the K most recent embeddings of earlier
steps for that purpose: after each step ``enqueue`` the batch's (detached) embeddings, and
pass ``queue.negatives`` to the loss of the next step.
"""

from __future__ import annotations

import torch
from torch import nn


class MemoryQueue(nn.Module):
    """A first-in, first-out buffer of the K most recent embeddings, stored detached.

    A ring buffer: ``enqueue`` overwrites the oldest rows, so a step costs O(B D), never a
    copy of the whole queue. It is an ``nn.Module`` with buffers only (no parameters): its
    ``state_dict`` holds the rows, the write position and the fill count, so a checkpoint can
    resume it, and ``.to(device)`` moves it.

    Args:
        size: capacity K, the number of embeddings kept, >= 1.
        dim: embedding width D, >= 1.
        dtype: floating dtype of the stored rows (float32 by default).
        device: where the rows live; ``enqueue`` expects embeddings on the same device.

    Raises:
        ValueError: ``size`` or ``dim`` not a positive int.
        TypeError: a non-floating ``dtype``.

    Example:
        >>> queue = MemoryQueue(3, 2)
        >>> queue.enqueue(torch.tensor([[1.0, 0.0], [2.0, 0.0]]))
        >>> queue.enqueue(torch.tensor([[3.0, 0.0], [4.0, 0.0]]))  # the oldest row is dropped
        >>> len(queue), sorted(queue.negatives[:, 0].tolist())
        (3, [2.0, 3.0, 4.0])

    Taught in notebook 08.
    """

    def __init__(
        self,
        size: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.register_buffer("rows", torch.zeros(size, dim, dtype=dtype, device=device))  # (K, D)
        # next row to overwrite and number of rows filled; tensors so that state_dict keeps them
        self.register_buffer("head", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        # host copies: reading the tensors above would synchronise a GPU on every step
        self._head = self._count = 0

    @property
    def size(self) -> int:
        """The capacity K."""
        return self.rows.shape[0]

    def __len__(self) -> int:
        """How many embeddings the queue holds: min(K, all enqueued so far)."""
        return self._count

    @property
    def negatives(self) -> torch.Tensor:
        """The (len, D) stored embeddings, detached, a view without a copy.

        Until the queue is full the rows come in the order they were enqueued; once full, in
        the ring's storage order (the loss does not depend on the order of its negatives).
        """
        return self.rows[: self._count]  # (len, D)

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor) -> None:
        """Append the rows of ``z`` (B, D), detached; the oldest rows make room when full.

        Args:
            z: (B, D) embeddings on the queue's device, any floating dtype (stored in the
                queue's). If B > K only the last K rows are kept.

        Raises:
            TypeError: ``z`` is not a floating tensor.
            ValueError: ``z`` is not 2-D, has another D, or is on another device. (Values are
                not read here, which would synchronise a GPU every step: the losses reject
                non-finite negatives when they use them.)
        """
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            got = z.dtype if isinstance(z, torch.Tensor) else type(z).__name__
            raise TypeError(f"enqueue expects a floating torch.Tensor (B, D), got {got}")
        k, d = self.rows.shape
        if z.dim() != 2 or z.shape[1] != d:
            raise ValueError(f"enqueue expects (B, {d}) embeddings, got shape {tuple(z.shape)}")
        if z.device != self.rows.device:
            raise ValueError(
                f"enqueue expects embeddings on the queue's device {self.rows.device}, got "
                f"{z.device}: move one with .to(...)"
            )
        z = z.detach()[-k:]  # (b, D) b <= K: an oversized batch keeps its last K rows
        b = z.shape[0]
        first = min(b, k - self._head)  # rows up to the end of the ring, then wrap around
        self.rows[self._head : self._head + first] = z[:first]
        self.rows[: b - first] = z[first:]
        self._head = (self._head + b) % k
        self._count = min(self._count + b, k)
        self.head.fill_(self._head)
        self.count.fill_(self._count)

    def clear(self) -> None:
        """Empty the queue (the rows stay allocated)."""
        self._head = self._count = 0
        self.head.zero_()
        self.count.zero_()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._head, self._count = int(self.head), int(self.count)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.rows.shape[1]}, len={len(self)}"
