"""Where the positives and negatives sit in the 2N x 2N similarity matrix.

Masking is where contrastive losses break, so it lives here, once. With the views stacked as
``z = cat([z1, z2])`` (2N rows), anchor ``a`` has its positive at ``(a + N) mod 2N``; every row
but ``a`` itself and that positive is a negative (same-view and cross-view alike).
"""

from __future__ import annotations

import torch


def positive_index(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Index of each anchor's positive in the stacked batch ``z = cat([z1, z2])``.

    Args:
        n: N, the number of pairs.
        device: where to put the index.

    Returns:
        ``(2N,)`` int64 tensor ``[N, ..., 2N-1, 0, ..., N-1]``.

    Example:
        >>> positive_index(3).tolist()
        [3, 4, 5, 0, 1, 2]

    Taught in notebook 01.
    """
    if n < 1:
        raise ValueError(f"need at least one pair, got N={n}")
    return torch.arange(2 * n, device=device).add(n).remainder(2 * n)  # (2N,)


def negative_mask(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean mask of the negatives of every anchor: ``True`` where ``j != a`` and ``j != pos(a)``.

    Args:
        n: N, the number of pairs.
        device: where to put the mask.

    Returns:
        ``(2N, 2N)`` bool tensor; each row has 2N-2 ``True`` entries.

    Example:
        >>> negative_mask(2).int().tolist()
        [[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]

    Taught in notebook 01.
    """
    rows = torch.arange(2 * n, device=device)  # (2N,)
    mask = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=device)  # (2N, 2N)
    mask[rows, rows] = False
    mask[rows, positive_index(n, device=device)] = False
    return mask
