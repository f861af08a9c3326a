import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import loop_losses

from dcl_teach.losses import LOSSES, DCLLoss, DCLWLoss, InfoNCELoss, dcl, dclw, info_nce

KINDS = ["infonce", "dcl", "dclw"]


def views(n, d, *, seed=0, dtype=torch.float64, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype) * scale
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=dtype) * scale  # correlated positives
    return z1, z2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", [(2, 3), (5, 4), (16, 8)])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_matches_loop_reference(kind, n, d, tau, impl):
    z1, z2 = views(n, d, seed=n + d)
    ref = loop_losses(z1, z2, tau=tau, kind=kind)
    got = LOSSES[kind](z1, z2, tau=tau, impl=impl)
    torch.testing.assert_close(got, ref.mean(), rtol=1e-10, atol=1e-10)
    per_anchor = LOSSES[kind](z1, z2, tau=tau, reduction="none")
    torch.testing.assert_close(per_anchor, ref, rtol=1e-10, atol=1e-10)
    total = LOSSES[kind](z1, z2, tau=tau, reduction="sum", impl=impl)
    torch.testing.assert_close(total, ref.sum(), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_without_normalisation_uses_raw_inner_products(kind):
    z1, z2 = views(6, 5)
    ref = loop_losses(z1, z2, tau=3.0, kind=kind, normalize=False)
    torch.testing.assert_close(LOSSES[kind](z1, z2, tau=3.0, normalize=False), ref.mean())


@pytest.mark.parametrize("n", [2, 3, 10, 64])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
def test_closed_forms_for_identical_embeddings(n, tau):
    z = torch.ones(n, 7, dtype=torch.float64)
    assert info_nce(z, z, tau=tau).item() == pytest.approx(math.log(2 * n - 1), abs=1e-9)
    assert dcl(z, z, tau=tau).item() == pytest.approx(math.log(2 * n - 2), abs=1e-9)
    assert dclw(z, z, tau=tau).item() == pytest.approx(math.log(2 * n - 2), abs=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 3, 7, 32, 1000])
def test_block_size_does_not_change_values_or_gradients(kind, block_size):
    z1, z2 = views(11, 6, seed=3)
    z1.requires_grad_()
    z2.requires_grad_()
    ref = LOSSES[kind](z1, z2, impl="dense")
    ref_g = torch.autograd.grad(ref, (z1, z2))
    got = LOSSES[kind](z1, z2, block_size=block_size)
    got_g = torch.autograd.grad(got, (z1, z2))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_g, ref_g):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 12),
    d=st.integers(1, 6),
    tau=st.floats(0.05, 5.0),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(KINDS),
)
def test_invariances(n, d, tau, seed, kind):
    z1, z2 = views(n, d, seed=seed)
    loss = LOSSES[kind]
    base = loss(z1, z2, tau=tau)
    # swapping the views relabels the anchors but leaves the mean unchanged
    torch.testing.assert_close(loss(z2, z1, tau=tau), base, rtol=1e-9, atol=1e-9)
    # permuting the pairs changes nothing
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(loss(z1[perm], z2[perm], tau=tau), base, rtol=1e-9, atol=1e-9)
    # rescaling raw embeddings row by row changes nothing: the loss normalises them
    g = torch.Generator().manual_seed(seed + 1)
    s1 = torch.rand(n, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    s2 = torch.rand(n, 1, generator=g, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(loss(z1 * s1, z2 * s2, tau=tau), base, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_stable_at_small_temperature_in_low_precision(kind, dtype):
    z1, z2 = views(64, 16, seed=1, dtype=torch.float32, scale=30.0)  # large raw norms too
    z1, z2 = z1.to(dtype), z2.to(dtype)
    got = LOSSES[kind](z1, z2, tau=0.01)
    ref = loop_losses(z1.double(), z2.double(), tau=0.01, kind=kind).mean()
    assert got.dtype == torch.float32
    assert torch.isfinite(got)
    # the error comes from rounding the inputs to `dtype`, amplified by 1/tau
    tol = {torch.float32: 1e-4, torch.bfloat16: 2.0, torch.float16: 0.3}[dtype]
    assert abs(got.item() - ref.item()) < tol * max(1.0, abs(ref.item()))


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_flow_back_in_the_input_dtype(kind):
    z1, z2 = views(8, 4, dtype=torch.float32)
    z1 = z1.to(torch.bfloat16).requires_grad_()
    z2 = z2.to(torch.bfloat16).requires_grad_()
    LOSSES[kind](z1, z2, tau=0.05).backward()
    assert z1.grad.dtype == torch.bfloat16 and torch.isfinite(z1.grad.float()).all()


def test_works_under_cpu_autocast():
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = lin(x), lin(x + 0.1)
        loss = dcl(z1, z2)
    loss.backward()
    ref = dcl(lin(x).detach(), lin(x + 0.1).detach())
    assert loss.dtype == torch.float32
    assert abs(loss.item() - ref.item()) < 0.1
    assert torch.isfinite(lin.weight.grad).all()


def test_no_grad_forward_builds_no_graph():
    z1, z2 = views(5, 3)
    z1.requires_grad_()
    with torch.no_grad():
        loss = dcl(z1, z2)
    assert loss.grad_fn is None


def test_dclw_weights_are_detached_and_change_the_loss():
    z1, z2 = views(6, 3, seed=4)
    assert not torch.isclose(dclw(z1, z2), dcl(z1, z2))
    # with detached weights the DCLW gradient of z equals autograd through a fixed weight vector
    z1r, z2r = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    g = torch.autograd.grad(dclw(z1r, z2r, sigma=0.3), (z1r, z2r))
    u1, u2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    w = 2 - 6 * torch.softmax((u1 * u2).sum(1) / 0.3, dim=0)
    z1r2, z2r2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    u1r, u2r = (
        torch.nn.functional.normalize(z1r2, dim=1),
        torch.nn.functional.normalize(z2r2, dim=1),
    )
    pos = (u1r * u2r).sum(1) / 0.1
    manual = (
        dcl(z1r2, z2r2, reduction="none") + pos.repeat(2) - w.repeat(2) * pos.repeat(2)
    ).mean()
    g2 = torch.autograd.grad(manual, (z1r2, z2r2))
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(5, 3)),
            ValueError,
            r"same shape.*\(4, 3\).*\(5, 3\)",
        ),
        (
            lambda: dcl(torch.randn(4), torch.randn(4)),
            ValueError,
            r"2-D \(N, D\), got shape \(4,\)",
        ),
        (lambda: dcl(torch.randn(1, 3), torch.randn(1, 3)), ValueError, r"at least 2 pairs.*N=1"),
        (lambda: dclw(torch.randn(1, 3), torch.randn(1, 3)), ValueError, r"DCLW needs at least 2"),
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(4, 3), tau=0),
            ValueError,
            r"tau must be .* > 0, got 0.0",
        ),
        (lambda: info_nce(torch.randn(4, 3), torch.randn(4, 3), tau=-1), ValueError, r"tau"),
        (lambda: dcl(torch.randn(4, 3), torch.randn(4, 3), tau=float("nan")), ValueError, r"tau"),
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(4, 3), tau="0.1"),
            TypeError,
            r"tau must be a real number",
        ),
        (lambda: dclw(torch.randn(4, 3), torch.randn(4, 3), sigma=0), ValueError, r"sigma"),
        (
            lambda: dcl(torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64)),
            TypeError,
            r"floating dtype.*int64",
        ),
        (lambda: dcl([[1.0]], [[1.0]]), TypeError, r"torch.Tensor"),
        (
            lambda: dcl(torch.full((4, 3), float("nan")), torch.randn(4, 3)),
            ValueError,
            r"z1 contains 12 non-finite",
        ),
        (
            lambda: dcl(
                torch.randn(4, 3), torch.tensor([[1.0, 2, 3]] * 3 + [[float("inf"), 0, 0]])
            ),
            ValueError,
            r"z2 contains 1 non-finite",
        ),
        (
            lambda: dcl(torch.zeros(4, 3), torch.randn(4, 3)),
            ValueError,
            r"all-zero rows \[0, 1, 2, 3\]",
        ),
        (lambda: dcl(torch.randn(4, 0), torch.randn(4, 0)), ValueError, r"D=0"),
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(4, 3), reduction="avg"),
            ValueError,
            r"reduction",
        ),
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(4, 3), block_size=0),
            ValueError,
            r"block_size",
        ),
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(4, 3), block_size=True),
            ValueError,
            r"block_size must be a positive int or None, got True",
        ),
        (
            lambda: info_nce(torch.randn(0, 3), torch.randn(0, 3)),
            ValueError,
            r"^InfoNCE needs at least 1 pair \(N >= 1\), got N=0$",
        ),
        (
            lambda: dcl(torch.randn(4, 3), torch.randn(4, 3, dtype=torch.float64)),
            TypeError,
            r"same dtype, got torch.float32 and torch.float64",
        ),
        (
            lambda: dcl(torch.randn(4, 3, device="meta"), torch.randn(4, 3, device="meta")),
            ValueError,
            r"z1 is a meta tensor .* need real values",
        ),
        (
            lambda: torch.func.vmap(lambda a, b: dcl(a, b))(
                torch.randn(2, 4, 3), torch.randn(2, 4, 3)
            ),
            TypeError,
            r"z1 is wrapped by a torch.func transform \(vmap",
        ),
        (
            lambda: dcl(torch.randn(4, 3), torch.tensor([[1.0, 0, 0], [0, 0, 0]] * 2)),
            ValueError,
            r"z2 has all-zero rows \[1, 3\]",
        ),
        (lambda: DCLLoss(tau=0), ValueError, r"tau"),
        (lambda: DCLWLoss(sigma=-2), ValueError, r"sigma"),
    ],
)
def test_bad_input_is_reported_clearly(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_info_nce_accepts_a_single_pair():
    z = torch.randn(1, 3)
    assert info_nce(z, z).item() == pytest.approx(0.0, abs=1e-6)  # only the positive: log 1


@pytest.mark.parametrize(
    "module,fn",
    [
        (InfoNCELoss(tau=0.3), info_nce),
        (DCLLoss(tau=0.3), dcl),
        (DCLWLoss(tau=0.3, sigma=0.2), dclw),
    ],
)
def test_modules_only_hold_hyperparameters(module, fn):
    z1, z2 = views(5, 4)
    kwargs = {"tau": 0.3} | ({"sigma": 0.2} if fn is dclw else {})
    assert module(z1, z2).item() == fn(z1, z2, **kwargs).item()
    assert list(module.parameters()) == []
    assert "tau=0.3" in repr(module)


@pytest.mark.parametrize("kind", ["infonce", "dcl"])
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_gradgradcheck(kind, impl):
    z1, z2 = views(4, 3, seed=12)
    z1.requires_grad_()
    z2.requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda a, b: LOSSES[kind](a, b, tau=0.5, impl=impl, block_size=3), (z1, z2)
    )


def test_dclw_second_derivatives_equal_the_dense_ones():
    # DCLW's weights are detached, so its "gradient" is not the gradient of a function of z and
    # gradgradcheck's finite differences (which move the weights) cannot apply; the kernel's
    # gradgradcheck with given weights is in test_fused.py. Here: fused = dense, to second order.
    z1, z2 = views(5, 3, seed=13)

    def hvp(impl):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        ga, gb = torch.autograd.grad(dclw(a, b, tau=0.4, impl=impl), (a, b), create_graph=True)
        return torch.autograd.grad((ga.pow(2).sum() + (gb * b).sum()), (a, b))

    for got, ref in zip(hvp("fused"), hvp("dense")):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-13)


def test_gradient_penalty_matches_dense_issue_example():
    # issue 10: the second-order term of a gradient penalty was silently dropped
    z2 = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def gp(impl):
        g = torch.Generator().manual_seed(1)
        a = torch.randn(8, 16, dtype=torch.float64, generator=g).requires_grad_()
        (grad,) = torch.autograd.grad(dcl(a, z2, tau=0.5, impl=impl), a, create_graph=True)
        return torch.autograd.grad(grad.pow(2).sum(), a)[0]

    torch.testing.assert_close(gp("fused"), gp("dense"), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-13, 1e-20, 1e-30, 1e19, 1e25])
def test_normalisation_holds_at_any_scale(kind, dtype, scale):
    # F.normalize leaves rows below its eps 1e-12 unnormalised; float32 squares under- and
    # overflow beyond 1e-19 and 1e19. The loss must not depend on the rows' scale at all.
    z1, z2 = views(6, 5, seed=14)
    ref = LOSSES[kind](z1, z2, tau=0.2)
    a = (z1 * scale).to(dtype).requires_grad_()
    b = (z2 * scale).to(dtype).requires_grad_()
    got = LOSSES[kind](a, b, tau=0.2)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got.double(), ref, rtol=tol, atol=tol)
    got.backward()
    # the gradient of a scale-invariant loss scales as 1 / scale and stays finite
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_normalisation_gradient_is_exact_for_tiny_rows():
    z1, z2 = views(5, 4, seed=15)
    a = z1.clone().requires_grad_()
    (g,) = torch.autograd.grad(dcl(a, z2, tau=0.3), a)
    tiny = (z1 * 1e-20).requires_grad_()
    (g_tiny,) = torch.autograd.grad(dcl(tiny, z2, tau=0.3), tiny)
    torch.testing.assert_close(g_tiny * 1e-20, g, rtol=1e-10, atol=1e-14)
