"""Where the positives and negatives sit in the 2N x 2N similarity matrix.

Masking is where contrastive losses break, so it lives here, once. With the views stacked as
``z = cat([z1, z2])`` (2N rows), anchor ``a`` has its positive at ``pos(a) = (a + N) mod 2N``;
every row but ``a`` itself and ``pos(a)`` is a negative (same-view and cross-view alike).
"""

from __future__ import annotations

import torch


def positive_index(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Index ``pos(a)`` of each anchor's positive in the stacked batch ``z = cat([z1, z2])``.

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
    return positive_of(torch.arange(2 * n, device=device), 2 * n)  # (2N,)


def positive_of(rows: torch.Tensor, num_candidates: int) -> torch.Tensor:
    """Positions of the positives of the anchors at ``rows`` among ``num_candidates`` stacked rows.

    The candidates are ``cat([z1, z2])`` of the (possibly gathered) batch, so the other view of
    row ``a`` is half the stack away.

    Args:
        rows: (M,) int64 positions of the anchors.
        num_candidates: K, the (even) number of stacked rows.

    Returns:
        (M,) int64 positions of their positives.

    Example:
        >>> positive_of(torch.tensor([0, 5]), 8).tolist()
        [4, 1]

    Taught in notebook 04.
    """
    return (rows + num_candidates // 2).remainder(num_candidates)  # (M,)


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
