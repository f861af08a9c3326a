"""Tests for dcl_teach.tiles: the tiles of the symmetric kernel and its scratch memory."""

import pytest
import torch

from dcl_teach.masks import negative_mask
from dcl_teach.tiles import (
    WORKSPACE_BYTES,
    exclude_,
    give,
    held_buffers,
    release_workspace,
    take,
    tile_entries,
    tiles,
)


@pytest.mark.parametrize("k,b", [(1, 1), (5, 3), (8, 8), (10, 4), (9, 2)])
def test_tiles_cover_the_upper_triangle_of_blocks_once(k, b):
    covered = torch.zeros(k, k, dtype=torch.int64)
    for r0, r1, c0, c1 in tiles(k, b):
        assert r0 <= c0 and r1 - r0 <= b and c1 - c0 <= b
        covered[r0:r1, c0:c1] += 1
    blocks = torch.arange(k) // b  # (K,) block of each row
    upper = blocks[:, None] <= blocks[None, :]  # (K, K)
    assert torch.equal(covered, upper.long())
    assert tile_entries(k, b) == int(upper.sum())


@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("block_size", [1, 3, 5, 16])
def test_tile_exclusion_matches_the_negative_mask(n, block_size):
    # every tile of the symmetric kernel, assembled, must exclude exactly self and positive
    k = 2 * n
    full = torch.zeros(k, k)
    for r0 in range(0, k, block_size):
        for c0 in range(0, k, block_size):
            tile = torch.zeros(min(block_size, k - r0), min(block_size, k - c0))
            exclude_(tile, r0, c0, n, decoupled=True)
            full[r0 : r0 + tile.shape[0], c0 : c0 + tile.shape[1]] = tile
    assert torch.equal(full == 0, negative_mask(n))
    infonce = torch.zeros(k, k)
    exclude_(infonce, 0, 0, n, decoupled=False)
    assert torch.equal(infonce == 0, ~torch.eye(k, dtype=torch.bool))


def test_workspace_hands_back_the_smallest_buffer_that_fits_and_is_bounded():
    release_workspace()
    like = torch.zeros(1)
    small, large = take(100, like), take(1000, like)
    give(large, small, None)
    assert [t.numel() for t in held_buffers()] == [1000, 100]
    assert take(50, like).numel() == 100  # the smallest that fits
    assert take(50, like.double()).dtype == torch.float64  # another dtype: a fresh buffer
    give(torch.empty(WORKSPACE_BYTES // 4 + 1))  # more than the pool may hold: freed
    assert sum(t.numel() * 4 for t in held_buffers()) <= WORKSPACE_BYTES
    release_workspace()
    assert held_buffers() == []
