import pytest
import torch
import torch.nn.functional as F

from dcl_teach.fused import ContrastiveFunction, default_block_size, dense_rows, fused_rows


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
