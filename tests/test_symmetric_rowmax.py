"""Tests for dcl_teach.symmetric_rowmax: the tile-shifted path, piece by piece, in float64.

Each function is compared with the plain full-matrix computation: ``lse`` with
``torch.logsumexp`` over the masked similarity matrix, ``(P + P^T) Z`` with the softmax written
out. Rows of any length (the path is the one for ``normalize=False``) and a spread of row
maxima wide enough to take every branch (the rank-one rescaling and the two-pass fallback).
"""

import pytest
import torch

from dcl_teach import tiles as tiles_module
from dcl_teach.masks import negative_mask
from dcl_teach.symmetric_rowmax import (
    LSE_SPREAD,
    _columns_from_rows,
    _tile_logsumexp,
    one_tile_backward,
    one_tile_forward,
    tiled_backward,
    tiled_forward,
)


def rows(k, d, seed, spread):
    """(K, D) rows whose lengths span ``spread`` (so the row maxima of S spread too)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, d, generator=g, dtype=torch.float64)
    return z * torch.linspace(1.0, spread, k, dtype=torch.float64)[:, None]


def dense(z, tau, decoupled):
    """Masked S, its row log-sum-exps and (P + P^T) Z, written out."""
    n = z.shape[0] // 2
    s = z @ z.t() / tau  # (K, K)
    keep = negative_mask(n) if decoupled else ~torch.eye(2 * n, dtype=torch.bool)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=1)  # (K,)
    p = torch.exp(s - lse[:, None])  # (K, K)
    return lse, (p + p.t()) @ z


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("spread", [1.0, 6.0])  # lse within LSE_SPREAD, then far beyond it
@pytest.mark.parametrize("block", [3, 5, 16])
@pytest.mark.parametrize("cached", [True, False])
def test_tiled_forward_and_backward_equal_the_full_matrix(
    decoupled, spread, block, cached, monkeypatch
):
    if not cached:
        monkeypatch.setattr(tiles_module, "CACHE_ENTRIES", 0)
    z = rows(16, 4, seed=1, spread=spread)
    lse_ref, grad_ref = dense(z, 0.3, decoupled)
    lse, arena = tiled_forward(z, 1 / 0.3, 8, block, decoupled, need_grad=True)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-12, atol=1e-12)
    assert (arena is not None) == cached
    grad = tiled_backward(z, lse, arena, 1 / 0.3, block, decoupled)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-10)


def test_the_spread_of_the_test_batches_takes_both_backward_branches():
    for spread, wide in ((1.0, False), (6.0, True)):
        lse, _ = dense(rows(16, 4, seed=1, spread=spread), 0.3, True)
        assert (float(lse.max() - lse.min()) > LSE_SPREAD) == wide


@pytest.mark.parametrize("decoupled", [False, True])
def test_one_tile_forward_and_backward_equal_the_full_matrix(decoupled):
    z = rows(10, 3, seed=2, spread=3.0)
    lse_ref, grad_ref = dense(z, 0.2, decoupled)
    lse, arena, sums = one_tile_forward(z, 1 / 0.2, 5, decoupled, need_grad=True)
    torch.testing.assert_close(lse, lse_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(one_tile_backward(z, arena, sums), grad_ref)
    lse_only, kept, _ = one_tile_forward(z, 1 / 0.2, 5, decoupled, need_grad=False)
    assert kept is None and torch.equal(lse_only, lse)


def test_columns_from_rows_equals_the_column_pass_or_declines():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(6, 9, generator=g, dtype=torch.float64) * 4  # (b, c) a tile
    scratch = torch.empty(s.numel(), dtype=torch.float64)
    _, e, m = _tile_logsumexp(s, 1, scratch.view(6, 9), keep=True)  # row pass
    col = _columns_from_rows(e, m)
    torch.testing.assert_close(col, torch.logsumexp(s, dim=0), rtol=1e-12, atol=1e-12)
    far = s.clone()
    far[0] += 3 * LSE_SPREAD  # one row far above the others: the weights would underflow
    _, e, m = _tile_logsumexp(far, 1, scratch.view(6, 9), keep=True)
    assert _columns_from_rows(e, m) is None
    torch.testing.assert_close(
        _tile_logsumexp(far, 0, scratch.view(6, 9)), torch.logsumexp(far, dim=0)
    )
