import pytest
import torch
import torch.nn.functional as F

from dcl_teach import fused as fused_module
from dcl_teach.fused import (
    ContrastiveFunction,
    SymmetricContrastiveFunction,
    default_block_size,
    dense_rows,
    fused_rows,
    fused_symmetric,
)
from dcl_teach.masks import negative_mask


def unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("block_size", [1, 4, 64])
def test_gradcheck_single_process_layout(decoupled, block_size):
    z = unit(10, 3, seed=1).requires_grad_()
    rows = torch.arange(10)
    w = torch.rand(10, dtype=torch.float64) * 2 - 0.5  # arbitrary weights, negative ones too

    def f(x):
        return ContrastiveFunction.apply(x, x, rows, w, 0.3, decoupled, block_size, 0.1)

    assert torch.autograd.gradcheck(f, (z,))


@pytest.mark.parametrize("decoupled", [False, True])
def test_gradcheck_separate_anchors_and_candidates(decoupled):
    # the gathered layout: 4 local anchors among 12 candidates of a 3-rank batch
    zc = unit(12, 4, seed=2).requires_grad_()
    za = unit(4, 4, seed=3).requires_grad_()
    rows = torch.tensor([2, 3, 8, 9])
    w = torch.tensor([1.0, 0.5, 1.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, c: ContrastiveFunction.apply(a, c, rows, w, 0.5, decoupled, 3, 1.0), (za, zc)
    )


@pytest.mark.parametrize("decoupled", [False, True])
def test_fused_equals_dense_values_and_gradients(decoupled):
    z = unit(33, 8, seed=4).requires_grad_()
    rows = torch.arange(33 - 1)  # an even K is needed; use 32 candidates
    z32 = z[:32]
    w = torch.rand(32, dtype=torch.float64)
    a = fused_rows(z32, z32, rows, w, tau=0.07, decoupled=decoupled, block_size=5, scale=1 / 32)
    b = dense_rows(z32, z32, rows, w, tau=0.07, decoupled=decoupled).mean()
    ga = torch.autograd.grad(a, z)[0]
    gb = torch.autograd.grad(b, z)[0]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


def test_backward_scales_with_the_incoming_gradient():
    z = unit(8, 3, seed=5).requires_grad_()
    rows, w = torch.arange(8), torch.ones(8, dtype=torch.float64)
    (g1,) = torch.autograd.grad(fused_rows(z, z, rows, w, tau=0.2, decoupled=True), z)
    (g3,) = torch.autograd.grad(3.0 * fused_rows(z, z, rows, w, tau=0.2, decoupled=True), z)
    torch.testing.assert_close(g3, 3.0 * g1)


def test_default_block_keeps_a_tile_near_16_mib():
    for k in (64, 2048, 8192, 65536):
        b = default_block_size(k)
        assert b >= 16
        assert b * k * 4 <= 16 * 2**20 or b == 16


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("decoupled", [False, True])
def test_rows_far_below_the_shift_bound_are_redone_exactly(dtype, decoupled):
    # orthogonal embeddings at tau = 0.01: every negative sits 100 below the bound 1/tau, so
    # exp(s - 1/tau) underflows float32 and the exact row-max path must take over
    z = torch.eye(8, dtype=dtype)
    zc = torch.cat([z[:4], z[:4] * 0.6 + z[4:] * 0.8])  # positives at cosine 0.6
    rows, w = torch.arange(8), torch.ones(8, dtype=dtype)
    got = fused_rows(zc, zc, rows, w, tau=0.01, decoupled=decoupled)
    ref = dense_rows(
        zc.double(), zc.double(), rows, w.double(), tau=0.01, decoupled=decoupled
    ).sum()
    assert torch.isfinite(got)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)


def clustered(n_pairs, d, *, seed, spread=0.05):
    """Views of a trained-looking batch: tight clusters on orthogonal axes. At tau = 0.01 every
    negative outside a row's cluster sits about 90 below the row's maximum, which is where
    float32 exponentials turn subnormal (e^-87 to e^-104)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d, dtype=torch.float64)[torch.arange(n_pairs) % 8]  # (N, D)
    z1 = F.normalize(centres + spread * torch.randn(n_pairs, d, generator=g), dim=1)
    z2 = F.normalize(centres + spread * torch.randn(n_pairs, d, generator=g), dim=1)
    return torch.cat([z1, z2])  # (2N, D)


@pytest.mark.parametrize("decoupled", [False, True])
def test_small_tau_in_the_subnormal_range_is_exact_in_float32(decoupled):
    z = clustered(64, 16, seed=6)
    rows, w = torch.arange(128), torch.ones(128, dtype=torch.float64)
    ref = dense_rows(z, z, rows, w, tau=0.01, decoupled=decoupled).mean()
    zf = z.float().requires_grad_()
    got = fused_rows(zf, zf, rows, w.float(), tau=0.01, decoupled=decoupled, scale=1 / 128)
    (grad,) = torch.autograd.grad(got, zf)
    zd = z.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(
        dense_rows(zd, zd, rows, w, tau=0.01, decoupled=decoupled).mean(), zd
    )
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-3, atol=1e-4)


def test_the_kernel_leaves_the_flush_denormal_mode_alone():
    # the kernel avoids subnormals by its shift, not by switching the CPU into flush-to-zero
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    before = bool(tiny.item() != 0)
    z = clustered(8, 8, seed=8).float()
    fused_rows(z, z, torch.arange(16), torch.ones(16), tau=0.01, decoupled=True)
    assert bool(torch.tensor([1e-40], dtype=torch.float32).item() != 0) == before


@pytest.mark.parametrize("decoupled", [False, True])
def test_gradgradcheck_both_layouts(decoupled):
    z = unit(6, 3, seed=9).requires_grad_()
    rows, w = torch.arange(6), torch.tensor([1.0, 0.5, 2.0, 1.0, 0.5, 2.0], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda x: ContrastiveFunction.apply(x, x, rows, w, 0.3, decoupled, 4, 0.1), (z,)
    )
    zc = unit(8, 3, seed=10).requires_grad_()
    za = unit(2, 3, seed=11).requires_grad_()
    rows2 = torch.tensor([1, 5])
    assert torch.autograd.gradgradcheck(
        lambda a, c: ContrastiveFunction.apply(a, c, rows2, w[:2], 0.5, decoupled, 1, 1.0),
        (za, zc),
    )


@pytest.fixture(params=["cached", "recomputed"])
def tile_cache(request, monkeypatch):
    """Run a test with the forward tiles kept for the backward pass, and without."""
    if request.param == "recomputed":
        monkeypatch.setattr(fused_module, "CACHE_ENTRIES", 0)
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


@pytest.mark.parametrize("n", [2, 3, 8])
@pytest.mark.parametrize("block_size", [1, 3, 5, 16])
def test_tile_exclusion_matches_the_negative_mask(n, block_size):
    # every tile of the symmetric kernel, assembled, must exclude exactly self and positive
    k = 2 * n
    full = torch.zeros(k, k)
    for r0 in range(0, k, block_size):
        for c0 in range(0, k, block_size):
            tile = torch.zeros(min(block_size, k - r0), min(block_size, k - c0))
            fused_module._exclude_(tile, r0, c0, n, decoupled=True)
            full[r0 : r0 + tile.shape[0], c0 : c0 + tile.shape[1]] = tile
    assert torch.equal(full == 0, negative_mask(n))
    infonce = torch.zeros(k, k)
    fused_module._exclude_(infonce, 0, 0, n, decoupled=False)
    assert torch.equal(infonce == 0, ~torch.eye(k, dtype=torch.bool))


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


def test_workspace_is_reused_and_released():
    z = unit(40, 4, seed=23).float().requires_grad_()
    w = torch.ones(40)
    fused_module.release_workspace()
    fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=16).backward()
    held = list(fused_module._workspace.free)
    assert held and sum(t.numel() * 4 for t in held) <= fused_module.WORKSPACE_BYTES
    first = z.grad.clone()
    z.grad = None
    fused_symmetric(z, w, tau=0.2, decoupled=True, block_size=16).backward()
    torch.testing.assert_close(z.grad, first, rtol=0, atol=0)  # reused buffers, same result
    assert {t.data_ptr() for t in fused_module._workspace.free} == {t.data_ptr() for t in held}
    fused_module.release_workspace()
    assert fused_module._workspace.free == []


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


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_gradcheck_with_extra_negatives(decoupled, block_size):
    # both layouts with X extra columns: no positive among them, no gradient for them
    z = unit(8, 3, seed=30).requires_grad_()
    neg = unit(5, 3, seed=31)
    rows, w = torch.arange(8), torch.rand(8, dtype=torch.float64) * 2 - 0.5
    assert torch.autograd.gradcheck(
        lambda x: ContrastiveFunction.apply(x, x, rows, w, 0.3, decoupled, block_size, 0.1, neg),
        (z,),
    )
    zc, za = unit(12, 4, seed=32).requires_grad_(), unit(4, 4, seed=33).requires_grad_()
    rows2, neg2 = torch.tensor([2, 3, 8, 9]), unit(7, 4, seed=34)
    assert torch.autograd.gradcheck(
        lambda a, c: ContrastiveFunction.apply(a, c, rows2, w[:4], 0.5, decoupled, 3, 1.0, neg2),
        (za, zc),
    )


@pytest.mark.parametrize("decoupled", [False, True])
def test_gradgradcheck_with_extra_negatives(decoupled):
    z = unit(6, 3, seed=35).requires_grad_()
    neg = unit(4, 3, seed=36)
    rows, w = torch.arange(6), torch.tensor([1.0, 0.5, 2.0] * 2, dtype=torch.float64)
    assert torch.autograd.gradgradcheck(
        lambda x: ContrastiveFunction.apply(x, x, rows, w, 0.3, decoupled, 4, 0.1, neg), (z,)
    )


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("x,block_size", [(0, 5), (1, 5), (17, 1), (17, 5), (40, None)])
def test_fused_rows_with_negatives_equals_dense_and_a_loop(decoupled, x, block_size):
    z = unit(12, 5, seed=37).requires_grad_()
    neg = unit(x, 5, seed=38).requires_grad_()  # requires grad: must be ignored
    rows, w = torch.arange(12), torch.rand(12, dtype=torch.float64)
    got = fused_rows(
        z, z, rows, w, tau=0.1, decoupled=decoupled, block_size=block_size, negatives=neg
    )
    ref = dense_rows(z, z, rows, w, tau=0.1, decoupled=decoupled, negatives=neg).sum()
    # the loop: each anchor's denominator is its batch set D(a) plus every extra row
    s = z.detach() @ torch.cat([z.detach(), neg.detach()]).t() / 0.1  # (12, 12 + X)
    loop = 0.0
    for a in range(12):
        p = (a + 6) % 12
        keep = [j for j in range(12 + x) if j != a and not (decoupled and j == p)]
        loop += torch.logsumexp(s[a, keep], 0) - w[a] * s[a, p]
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.detach(), loop, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(got, z)
    (g_ref,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)
    assert neg.grad is None


def test_no_negatives_and_zero_negatives_run_the_same_arithmetic():
    z = unit(10, 4, seed=39).requires_grad_()
    rows, w = torch.arange(10), torch.ones(10, dtype=torch.float64)
    a = fused_rows(z, z, rows, w, tau=0.2, decoupled=True, block_size=3)
    b = fused_rows(z, z, rows, w, tau=0.2, decoupled=True, block_size=3, negatives=z[:0])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    (ga,) = torch.autograd.grad(a, z)
    (gb,) = torch.autograd.grad(b, z)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
