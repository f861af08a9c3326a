"""Tests for dcl_teach.contrastive: the routine behind the three losses picks its kernel well.

The symmetric kernel (one process, rows normalised inside it) and the row-block kernel (which
the losses take with extra negatives, here zero of them) must give the same loss and gradient
for every loss, at every scale of the rows; the dense form is the reference for both.
"""

import pytest
import torch

from dcl_teach.contrastive import contrastive, vmf_weights_from_cosines


def views(n, d, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    z2 = z1 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) * scale
    return z1.requires_grad_(), z2.requires_grad_()


def run(z1, z2, *, sigma, decoupled, tau, **kw):
    loss = contrastive(
        z1,
        z2,
        tau=tau,
        decoupled=decoupled,
        sigma=sigma,
        normalize=True,
        reduction="mean",
        gather_distributed=False,
        block_size=kw.pop("block_size", None),
        name="test",
        **kw,
    )
    return (loss, *torch.autograd.grad(loss, (z1, z2)))


@pytest.mark.parametrize("sigma,decoupled", [(None, False), (None, True), (0.5, True)])
@pytest.mark.parametrize("tau", [0.2, 0.02])  # the unit-row shift, then the row maxima
@pytest.mark.parametrize("scale", [1e-20, 1.0, 1e15])
def test_symmetric_and_row_block_kernels_agree_with_the_dense_form(sigma, decoupled, tau, scale):
    z1, z2 = views(12, 5, seed=1, scale=scale)
    symmetric = run(z1, z2, sigma=sigma, decoupled=decoupled, tau=tau, impl="fused")
    rows = run(z1, z2, sigma=sigma, decoupled=decoupled, tau=tau, impl="fused", negatives=z1[:0])
    dense = run(z1, z2, sigma=sigma, decoupled=decoupled, tau=tau, impl="dense")
    for got, other, ref in zip(symmetric, rows, dense):
        size = float(ref.detach().abs().max())  # gradients scale as 1 / scale
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12 * size)
        torch.testing.assert_close(other, ref, rtol=1e-10, atol=1e-12 * size)


def test_symmetric_kernel_with_small_tiles_agrees_too():
    z1, z2 = views(9, 4, seed=2)
    a = run(z1, z2, sigma=0.5, decoupled=True, tau=0.1, impl="fused", block_size=4)
    b = run(z1, z2, sigma=0.5, decoupled=True, tau=0.1, impl="dense")
    for got, ref in zip(a, b):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_vmf_weights_average_to_one_and_favour_the_closest_pairs_least():
    c = torch.tensor([0.9, 0.5, -0.2, 0.1], dtype=torch.float64)
    w = vmf_weights_from_cosines(c, sigma=0.5)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(torch.argsort(w), torch.argsort(-c))  # closer pair, smaller weight
    big = vmf_weights_from_cosines(torch.tensor([1.0, -1.0]), sigma=1e-3)  # e^1000 overflows
    assert torch.isfinite(big).all() and big.tolist() == [0.0, 2.0]
