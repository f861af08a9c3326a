"""The kernels on CUDA: same numbers as on the CPU, and no host-device sync inside them.

Skipped without CUDA. ``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising
call (``.item()``, ``bool(tensor)``, ``.tolist()``, ``nonzero``) into an error, so these tests
fail if a kernel waits for the GPU once per block.
"""

import pytest
import torch
import torch.nn.functional as F

from dcl_teach.fused import dense_rows, fused_rows
from dcl_teach.losses import LOSSES
from dcl_teach.symmetric import fused_symmetric

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture
def no_sync():
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def unit(n, d, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1).cuda()


@pytest.mark.parametrize("inside", [False, True])  # rows as given, or normalised inside
@pytest.mark.parametrize("decoupled", [False, True])
def test_symmetric_kernel_never_syncs_and_matches_dense(decoupled, inside, no_sync):
    z = (unit(96, 16, seed=1) * (3.0 if inside else 1.0)).requires_grad_()
    peaks = z.detach().abs().amax(dim=1) if inside else None  # (K,)
    w = torch.rand(48, generator=torch.Generator().manual_seed(2)).repeat(2).cuda()
    rows = torch.arange(96, device="cuda")
    loss = fused_symmetric(
        z, w, tau=0.05, decoupled=decoupled, block_size=32, scale=1 / 96, peaks=peaks
    )
    (grad,) = torch.autograd.grad(loss, z)
    torch.cuda.set_sync_debug_mode("default")  # the reference may sync
    u = F.normalize(z, dim=1)  # (K, D) the rows as the kernel used them
    ref = dense_rows(u, u, rows, w, tau=0.05, decoupled=decoupled).mean()
    (ref_grad,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("decoupled", [False, True])
def test_gathered_kernel_never_syncs_and_matches_dense(decoupled, no_sync):
    zc = unit(64, 16, seed=3).requires_grad_()
    za = zc[8:24]
    rows = torch.arange(8, 24, device="cuda")
    w = torch.ones(16, device="cuda")
    loss = fused_rows(za, zc, rows, w, tau=0.05, decoupled=decoupled, block_size=5)
    (grad,) = torch.autograd.grad(loss, zc)
    torch.cuda.set_sync_debug_mode("default")
    ref = dense_rows(za, zc, rows, w, tau=0.05, decoupled=decoupled).sum()
    (ref_grad,) = torch.autograd.grad(ref, zc)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_losses_on_cuda_equal_the_cpu(kind):
    # the public losses check their input once per call (one batched transfer), not per block
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    cpu = LOSSES[kind](z1, z2, tau=0.1)
    gpu = LOSSES[kind](z1.cuda(), z2.cuda(), tau=0.1, block_size=16)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
