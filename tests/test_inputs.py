"""Tests for dcl_teach.inputs: the checks every loss runs first, and normalisation at any scale.

The losses' own messages for bad input are asserted in tests/test_losses.py
(``test_bad_input_is_reported_clearly``); these test the helpers themselves.
"""

import pytest
import torch

from dcl_teach.inputs import check_embeddings, check_negatives, check_positive, normalize_rows


@pytest.mark.parametrize("value", [0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_check_positive_rejects_what_is_not_a_positive_number(value):
    with pytest.raises((ValueError, TypeError), match="tau"):
        check_positive("tau", value)


def test_check_positive_returns_a_float():
    assert check_positive("tau", 1) == 1.0 and isinstance(check_positive("tau", 1), float)


def test_check_embeddings_names_shapes_and_pairs():
    z = torch.randn(4, 3)
    check_embeddings(z, z.clone(), min_pairs=2, loss="DCL")
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)|same shape"):
        check_embeddings(z, torch.randn(4, 2), min_pairs=2, loss="DCL")
    with pytest.raises(ValueError, match="DCL"):
        check_embeddings(z[:1], z[:1], min_pairs=2, loss="DCL")


def test_check_negatives_wants_rows_of_the_same_width():
    z = torch.randn(4, 3)
    negatives = torch.randn(5, 3)
    peaks = check_negatives(negatives, z, nonzero_rows=True)  # (K,) for normalize_rows
    torch.testing.assert_close(peaks, negatives.abs().amax(dim=1))
    with pytest.raises(ValueError, match="D=3 columns"):
        check_negatives(torch.randn(5, 2), z, nonzero_rows=True)


def test_normalize_rows_gradients_to_second_order():
    z = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(16))
    z = z * torch.tensor([[1e-20], [1.0], [3e15], [1.0], [1e-3]], dtype=torch.float64)
    z.requires_grad_()
    torch.testing.assert_close(normalize_rows(z), torch.nn.functional.normalize(z * 1e20, dim=1))
    small = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(normalize_rows, (small,))
    assert torch.autograd.gradgradcheck(normalize_rows, (small,))
    (g,) = torch.autograd.grad(normalize_rows(z).sum(), z)  # the in-place first-order path
    (g_ref,) = torch.autograd.grad(torch.nn.functional.normalize(z, dim=1).sum(), z)
    torch.testing.assert_close(g[1:], g_ref[1:])  # F.normalize is wrong on the 1e-20 row
