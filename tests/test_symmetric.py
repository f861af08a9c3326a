"""Tests for dcl_teach.symmetric: the single-process kernel against the dense references.

Every path is checked in float64 against autograd through the full matrix: one tile and several,
tiles kept for the backward and recomputed, rows used as given (the row-maxima path of
dcl_teach.symmetric_rowmax) and rows normalised inside the kernel (the unit-row path, and the
row-maxima path again below tau = 1/32).
"""

import pytest
import torch
import torch.nn.functional as F

from dcl_teach import tiles as tiles_module
from dcl_teach.fused import dense_rows, fused_rows
from dcl_teach.inputs import normalize_rows
from dcl_teach.symmetric import (
    MID_TILE,
    ONE_TILE_MAX,
    SYMMETRIC_TILE,
    UNIT_SHIFT_MIN_TAU,
    SymmetricContrastiveFunction,
    fused_symmetric,
    tile_side,
)
from tests.test_fused import clustered, unit


@pytest.fixture(params=["cached", "recomputed"])
def tile_cache(request, monkeypatch):
    """Run a test with the forward tiles kept for the backward pass, and without."""
    if request.param == "recomputed":
        monkeypatch.setattr(tiles_module, "CACHE_ENTRIES", 0)
    return request.param


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("block_size", [1, 3, 4, 7, 64])
def test_gradcheck_symmetric_kernel(decoupled, block_size, tile_cache):
    z = unit(10, 3, seed=16).requires_grad_()
    w = torch.rand(5, dtype=torch.float64) * 2 - 0.5
    w = torch.cat([w, w])  # (K,) a pair shares its weight, negative ones too

    def f(x):
        return SymmetricContrastiveFunction.apply(x, w, 0.3, decoupled, block_size, 0.1)

    assert torch.autograd.gradcheck(f, (z,))


@pytest.mark.parametrize("decoupled", [False, True])
def test_gradgradcheck_symmetric_kernel(decoupled):
    z = unit(6, 3, seed=17).requires_grad_()
    w = torch.tensor([1.0, 0.5, 2.0] * 2, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda x: SymmetricContrastiveFunction.apply(x, w, 0.3, decoupled, 4, 0.1), (z,)
    )


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("k,block_size", [(2, 1), (4, 3), (32, 5), (32, 16), (30, 7), (64, 100)])
def test_symmetric_kernel_equals_both_references(decoupled, k, block_size, tile_cache):
    if k == 2 and decoupled:
        pytest.skip("DCL needs two pairs")
    z = unit(k, 8, seed=18).requires_grad_()
    rows, w = torch.arange(k), torch.rand(k // 2, dtype=torch.float64).repeat(2)
    got = fused_symmetric(z, w, tau=0.07, decoupled=decoupled, block_size=block_size, scale=0.5)
    ref = dense_rows(z, z, rows, w, tau=0.07, decoupled=decoupled).sum() * 0.5
    other = fused_rows(z, z, rows, w, tau=0.07, decoupled=decoupled, scale=0.5)
    (g,) = torch.autograd.grad(got, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    (g_other,) = torch.autograd.grad(other, z)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_other, g_ref, rtol=1e-10, atol=1e-12)


def test_symmetric_backward_twice_with_retained_graph(tile_cache):
    z = unit(12, 4, seed=19).requires_grad_()
    w = torch.ones(12, dtype=torch.float64)
    loss = fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=5)
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(2.0 * loss, z)
    torch.testing.assert_close(g2, 2.0 * g1)


def test_symmetric_forward_without_grad_keeps_nothing():
    z = unit(8, 4, seed=20)
    w = torch.ones(8, dtype=torch.float64)
    with torch.no_grad():
        loss = fused_symmetric(z, w, tau=0.2, decoupled=True)
    assert loss.grad_fn is None
    ref = dense_rows(z, z, torch.arange(8), w, tau=0.2, decoupled=True).sum()
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("decoupled", [False, True])
def test_symmetric_small_tau_in_the_subnormal_range(decoupled, tile_cache):
    z = clustered(64, 16, seed=21)
    w = torch.ones(128, dtype=torch.float64)
    zd = z.clone().requires_grad_()
    ref = dense_rows(zd, zd, torch.arange(128), w, tau=0.01, decoupled=decoupled).mean()
    (ref_grad,) = torch.autograd.grad(ref, zd)
    zf = z.float().requires_grad_()
    got = fused_symmetric(
        zf, w.float(), tau=0.01, decoupled=decoupled, block_size=48, scale=1 / 128
    )
    (grad,) = torch.autograd.grad(got, zf)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-4)


def test_two_losses_before_one_backward_keep_their_own_tiles():
    # the forward's tiles live until their backward: a second forward must not overwrite them
    z = unit(16, 4, seed=24).requires_grad_()
    w = torch.ones(16, dtype=torch.float64)
    a = fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=5)
    b = fused_symmetric(z * 0.5, w, tau=0.3, decoupled=False, block_size=5)
    (g,) = torch.autograd.grad(a + b, z)
    ref_a = dense_rows(z, z, torch.arange(16), w, tau=0.2, decoupled=True).sum()
    zb = z * 0.5
    ref_b = dense_rows(zb, zb, torch.arange(16), w, tau=0.3, decoupled=False).sum()
    (g_ref,) = torch.autograd.grad(ref_a + ref_b, z)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def raw(k, d, seed):
    """Rows far from unit length, at scales from 1e-20 to 1e15 (float64)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(k, d, generator=g, dtype=torch.float64)
    return z * torch.logspace(-20, 15, k, dtype=torch.float64)[torch.randperm(k, generator=g), None]


def peaks_of(z):
    return z.detach().abs().amax(dim=1)  # (K,)


@pytest.mark.parametrize("tau", [0.3, 0.02])  # the unit-row path, then the row-maxima path
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("block_size", [1, 3, 4, 7, 64])
def test_gradcheck_with_normalisation_inside(tau, decoupled, block_size, tile_cache):
    # gradcheck steps by 1e-6 absolutely, so rows of moderate length (0.5 to 3); the scales
    # from 1e-20 to 1e15 are checked against the dense reference below
    z = unit(10, 3, seed=40) * torch.linspace(0.5, 3.0, 10, dtype=torch.float64)[:, None]
    w = torch.rand(5, dtype=torch.float64) * 2 - 0.5
    w = torch.cat([w, w])  # (K,)
    peaks = peaks_of(z)

    def f(x):
        return SymmetricContrastiveFunction.apply(x, w, tau, decoupled, block_size, 0.1, peaks)

    assert torch.autograd.gradcheck(f, (z.requires_grad_(),))


@pytest.mark.parametrize("tau", [0.3, 0.02])
@pytest.mark.parametrize("decoupled", [False, True])
def test_gradgradcheck_with_normalisation_inside(tau, decoupled):
    z = unit(6, 3, seed=41).mul(
        torch.tensor([0.5, 1.0, 2.0, 3.0, 0.7, 1.5], dtype=torch.float64)[:, None]
    )
    w = torch.tensor([1.0, 0.5, 2.0] * 2, dtype=torch.float64)
    peaks = peaks_of(z)
    assert torch.autograd.gradgradcheck(
        lambda x: SymmetricContrastiveFunction.apply(x, w, tau, decoupled, 4, 0.1, peaks),
        (z.requires_grad_(),),
    )


@pytest.mark.parametrize("tau", [0.07, UNIT_SHIFT_MIN_TAU, 0.02])
@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("k,block_size", [(4, 3), (32, 5), (30, 7), (64, 100), (64, None)])
def test_normalisation_inside_equals_the_dense_reference(tau, decoupled, k, block_size, tile_cache):
    z = raw(k, 8, seed=42).requires_grad_()
    w = torch.rand(k // 2, dtype=torch.float64).repeat(2)
    got = fused_symmetric(
        z, w, tau=tau, decoupled=decoupled, block_size=block_size, scale=0.5, peaks=peaks_of(z)
    )
    u = (
        z
        / torch.linalg.vector_norm(z / peaks_of(z)[:, None], dim=1, keepdim=True)
        / peaks_of(z)[:, None]
    )
    ref = dense_rows(u, u, torch.arange(k), w, tau=tau, decoupled=decoupled).sum() * 0.5
    (g,) = torch.autograd.grad(got, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("decoupled", [False, True])
def test_unit_rows_at_the_smallest_shared_shift_stay_exact_in_float32(decoupled):
    # tau = 1/32 with anti-aligned pairs: exponents reach -2/tau = -64, the floor of normal
    # floats that the shared shift promises; the clustered batch adds exponents near -64 too
    z = clustered(32, 16, seed=43)
    z = torch.cat([z, -z[:8], z[:8].flip(0)])  # (80, D) some rows opposite to others
    k = z.shape[0]
    w = torch.ones(k, dtype=torch.float64)
    tau = UNIT_SHIFT_MIN_TAU
    zd = (z * 7.0).requires_grad_()  # raw rows, normalised inside
    u = F.normalize(zd, dim=1)  # (K, D)
    ref = dense_rows(u, u, torch.arange(k), w, tau=tau, decoupled=decoupled).mean()
    (g_ref,) = torch.autograd.grad(ref, zd)
    zf = (z * 7.0).float().requires_grad_()
    got = fused_symmetric(
        zf, w.float(), tau=tau, decoupled=decoupled, scale=1 / k, peaks=peaks_of(zf)
    )
    (g,) = torch.autograd.grad(got, zf)
    assert torch.isfinite(got) and torch.isfinite(g).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-3, atol=1e-5)


def test_normalisation_inside_twice_with_retained_graph(tile_cache):
    z = raw(12, 4, seed=44).requires_grad_()
    w = torch.ones(12, dtype=torch.float64)
    loss = fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=5, peaks=peaks_of(z))
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(2.0 * loss, z)
    torch.testing.assert_close(g2, 2.0 * g1)


def test_tile_side_is_one_tile_then_the_middle_tile_then_the_largest_tile():
    assert tile_side(2) == 2 and tile_side(ONE_TILE_MAX) == ONE_TILE_MAX
    assert tile_side(ONE_TILE_MAX + 2) == MID_TILE < ONE_TILE_MAX
    assert tile_side(4 * ONE_TILE_MAX) == MID_TILE
    assert tile_side(4 * ONE_TILE_MAX + 2) == SYMMETRIC_TILE


def test_workspace_buffers_are_reused_with_the_same_result():
    z = unit(40, 4, seed=23).float().requires_grad_()
    w = torch.ones(40)
    tiles_module.release_workspace()
    fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=16).backward()
    held = tiles_module.held_buffers()
    assert held and sum(t.numel() * 4 for t in held) <= tiles_module.WORKSPACE_BYTES
    first = z.grad.clone()
    z.grad = None
    fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=16).backward()
    torch.testing.assert_close(z.grad, first, rtol=0, atol=0)  # reused buffers, same result
    assert {t.data_ptr() for t in tiles_module.held_buffers()} == {t.data_ptr() for t in held}
    tiles_module.release_workspace()


@pytest.mark.parametrize("inside", [False, True])  # rows as given, or normalised inside
def test_weights_from_the_kernels_own_cosines_equal_given_constant_weights(inside):
    z = raw(12, 4, seed=45) if inside else unit(12, 4, seed=45)
    z.requires_grad_()
    peaks = peaks_of(z) if inside else None
    u = normalize_rows(z.detach()) if inside else z.detach()  # (K, D) at any scale
    seen = []

    def weigh(c):  # (N,) cosines of the pairs -> (N,) weights, as DCLW's
        seen.append(c)
        return 2.0 - c.shape[0] * torch.softmax(c / 0.5, dim=0)

    w = weigh((u[:6] * u[6:]).sum(dim=1))  # (N,) computed outside, constants
    got = fused_symmetric(z, weigh, tau=0.2, decoupled=True, peaks=peaks)
    ref = fused_symmetric(z, torch.cat([w, w]), tau=0.2, decoupled=True, peaks=peaks)
    assert not seen[-1].requires_grad  # the kernel hands over detached cosines
    torch.testing.assert_close(seen[-1], seen[0], rtol=1e-12, atol=1e-14)
    (g,) = torch.autograd.grad(got, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
