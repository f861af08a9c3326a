import pytest
import torch

from dcl_teach.masks import negative_mask, positive_index


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_positive_index_pairs_views(n):
    pos = positive_index(n)
    assert pos.shape == (2 * n,)
    for a in range(2 * n):
        assert pos[a] == (a + n if a < n else a - n)
    assert torch.equal(pos[pos], torch.arange(2 * n))  # the positive of the positive is the anchor


@pytest.mark.parametrize("n", [2, 3, 8])
def test_negative_mask_excludes_self_and_positive_only(n):
    mask = negative_mask(n)
    pos = positive_index(n)
    assert mask.shape == (2 * n, 2 * n) and mask.dtype == torch.bool
    assert torch.all(mask.sum(dim=1) == 2 * n - 2)
    for a in range(2 * n):
        for j in range(2 * n):
            assert bool(mask[a, j]) == (j != a and j != int(pos[a]))
    assert torch.equal(mask, mask.t())  # "j is a negative of a" is symmetric


def test_positive_index_rejects_empty_batch():
    with pytest.raises(ValueError, match="N=0"):
        positive_index(0)


def test_positive_of_agrees_with_positive_index_and_handles_gathered_rows():
    from dcl_teach.masks import positive_of

    assert torch.equal(positive_of(torch.arange(10), 10), positive_index(5))
    # rank 1 of 2 ranks with n = 3: local anchors at 3..5 (view 1) and 9..11 (view 2) of K = 12
    rows = torch.tensor([3, 4, 5, 9, 10, 11])
    assert positive_of(rows, 12).tolist() == [9, 10, 11, 3, 4, 5]
