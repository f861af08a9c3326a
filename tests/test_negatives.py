"""Extra negatives (``negatives=``, a memory queue) in InfoNCE, DCL and DCLW."""

import math

import pytest
import torch

from dcl_teach.losses import LOSSES, DCLLoss, DCLWLoss, InfoNCELoss, dcl, dclw, info_nce

KINDS = ["infonce", "dcl", "dclw"]


def views(n, d, *, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype)
    z2 = z1 + 0.7 * torch.randn(n, d, generator=g, dtype=dtype)  # correlated positives
    return z1, z2


def queue_rows(k, d, *, seed=100, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=g, dtype=dtype) * 3.0  # raw scale: the loss normalises


def loop_losses_with_negatives(z1, z2, negatives, *, tau, kind, sigma=0.5):
    """Per-anchor losses in the order of cat([z1, z2]), one anchor and one term at a time."""

    def unit(v):
        return v / math.sqrt(float(v @ v))

    n = z1.shape[0]
    u1 = [unit(z1[i].double()) for i in range(n)]
    u2 = [unit(z2[i].double()) for i in range(n)]
    extra = [unit(negatives[k].double()) for k in range(negatives.shape[0])]
    if kind == "dclw":
        c = [float(u1[i] @ u2[i]) for i in range(n)]
        mean_exp = sum(math.exp(ci / sigma) for ci in c) / n
        w = [2 - math.exp(ci / sigma) / mean_exp for ci in c]  # from the batch's pairs only
    else:
        w = [1.0] * n
    out = []
    for anchors in (u1, u2):
        for i in range(n):
            a = anchors[i]
            s_pos = float(u1[i] @ u2[i]) / tau
            u = sum(math.exp(float(a @ v[j]) / tau) for v in (u1, u2) for j in range(n) if j != i)
            u += sum(math.exp(float(a @ m) / tau) for m in extra)  # the K extra negatives
            if kind == "infonce":
                out.append(-s_pos + math.log(math.exp(s_pos) + u))
            else:
                out.append(-w[i] * s_pos + math.log(u))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d,k", [(2, 3, 1), (5, 4, 7), (8, 6, 33)])
@pytest.mark.parametrize("tau", [0.05, 0.2, 1.0])
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_matches_loop_reference(kind, n, d, k, tau, impl):
    z1, z2 = views(n, d, seed=n + d)
    neg = queue_rows(k, d)
    ref = loop_losses_with_negatives(z1, z2, neg, tau=tau, kind=kind)
    got = LOSSES[kind](z1, z2, tau=tau, impl=impl, negatives=neg)
    torch.testing.assert_close(got, ref.mean(), rtol=1e-10, atol=1e-10)
    total = LOSSES[kind](z1, z2, tau=tau, impl=impl, negatives=neg, reduction="sum")
    torch.testing.assert_close(total, ref.sum(), rtol=1e-10, atol=1e-9)
    per_anchor = LOSSES[kind](z1, z2, tau=tau, negatives=neg, reduction="none")
    torch.testing.assert_close(per_anchor, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [None, 1, 3, 7, 1000])
def test_fused_equals_dense_values_and_gradients(kind, block_size):
    z1, z2 = views(9, 5, seed=2)
    neg = queue_rows(13, 5)
    grads = {}
    for impl in ("fused", "dense"):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = LOSSES[kind](a, b, tau=0.1, negatives=neg, impl=impl, block_size=block_size)
        grads[impl] = (loss, *torch.autograd.grad(loss, (a, b)))
    for got, ref in zip(grads["fused"], grads["dense"]):
        torch.testing.assert_close(got, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["infonce", "dcl"])
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_gradcheck_and_gradgradcheck(kind, impl):
    z1, z2 = views(4, 3, seed=3)
    z1.requires_grad_()
    z2.requires_grad_()
    neg = queue_rows(5, 3)

    def f(a, b):
        return LOSSES[kind](a, b, tau=0.4, impl=impl, block_size=3, negatives=neg)

    assert torch.autograd.gradcheck(f, (z1, z2))
    assert torch.autograd.gradgradcheck(f, (z1, z2))


def test_dclw_gradient_with_negatives_is_dcl_with_reweighted_positive():
    # DCLW's weights are detached, so gradcheck does not apply (see test_losses.py); instead:
    # its gradient equals autograd through DCL plus (1 - w) times the positive term
    z1, z2 = views(6, 4, seed=4)
    neg = queue_rows(9, 4)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    got = torch.autograd.grad(dclw(a, b, tau=0.3, sigma=0.4, negatives=neg), (a, b))
    u1, u2 = (torch.nn.functional.normalize(v, dim=1) for v in (z1, z2))
    w = (2 - 6 * torch.softmax((u1 * u2).sum(1) / 0.4, dim=0)).repeat(2)  # (2N,)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    ua, ub = (torch.nn.functional.normalize(v, dim=1) for v in (a, b))
    pos = ((ua * ub).sum(1) / 0.3).repeat(2)  # (2N,)
    manual = (dcl(a, b, tau=0.3, negatives=neg, reduction="none") + (1 - w) * pos).mean()
    for g, r in zip(got, torch.autograd.grad(manual, (a, b))):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_no_gradient_reaches_negatives_even_if_they_require_it(kind, impl):
    z1, z2 = views(5, 4, seed=5)
    z1.requires_grad_()
    neg = queue_rows(6, 4).requires_grad_()
    loss = LOSSES[kind](z1, z2, tau=0.2, negatives=neg, impl=impl)
    loss.backward()
    assert neg.grad is None  # detached silently, as documented
    assert z1.grad is not None and z1.grad.abs().sum() > 0
    (g_const,) = torch.autograd.grad(
        LOSSES[kind](z1, z2, tau=0.2, negatives=neg.detach(), impl=impl), z1
    )
    torch.testing.assert_close(z1.grad, g_const, rtol=0, atol=0)
    # a graph that reaches the loss only through the negatives yields no gradient at all
    with pytest.raises(RuntimeError, match="does not require grad"):
        LOSSES[kind](z1.detach(), z2, tau=0.2, negatives=neg, impl=impl).backward()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_zero_negatives_equal_none(kind, impl):
    z1, z2 = views(7, 4, seed=6)
    z1.requires_grad_()
    empty = torch.empty(0, 4, dtype=torch.float64)
    with_empty = LOSSES[kind](z1, z2, tau=0.15, negatives=empty, impl=impl)
    without = LOSSES[kind](z1, z2, tau=0.15, impl=impl)
    torch.testing.assert_close(with_empty, without, rtol=1e-12, atol=1e-12)
    (g0,) = torch.autograd.grad(with_empty, z1)
    (g1,) = torch.autograd.grad(without, z1)
    torch.testing.assert_close(g0, g1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 16])
@pytest.mark.parametrize("k", [0, 1, 10, 1000])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("impl", ["fused", "dense"])
def test_closed_forms_identical_embeddings_and_queue(n, k, tau, impl):
    z = torch.ones(n, 5, dtype=torch.float64)
    queue = torch.full((k, 5), 2.5, dtype=torch.float64)  # K copies of the same direction
    got = info_nce(z, z, tau=tau, negatives=queue, impl=impl).item()
    assert got == pytest.approx(math.log(2 * n - 1 + k), abs=1e-9)
    got = dcl(z, z, tau=tau, negatives=queue, impl=impl).item()
    assert got == pytest.approx(math.log(2 * n - 2 + k), abs=1e-9)
    got = dclw(z, z, tau=tau, negatives=queue, impl=impl).item()
    assert got == pytest.approx(math.log(2 * n - 2 + k), abs=1e-9)


def test_more_negatives_of_the_same_kind_raise_the_loss_by_the_log_of_the_count():
    # duplicating every queue row doubles each anchor's queue term: a sharp check that every
    # extra row is counted once per anchor, with no positive among them
    z1, z2 = views(6, 4, seed=7)
    neg = queue_rows(5, 4)
    one = dcl(z1, z2, tau=0.1, negatives=neg, reduction="none")
    two = dcl(z1, z2, tau=0.1, negatives=torch.cat([neg, neg]), reduction="none")
    batch_only = dcl(z1, z2, tau=0.1, reduction="none")
    # L = -s_pos + log(U + V): exp(L + s_pos) = U + V, so V = exp(L) - exp(L_batch) per anchor
    v_one = one.exp() - batch_only.exp()
    v_two = two.exp() - batch_only.exp()
    torch.testing.assert_close(v_two, 2 * v_one, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_invariances(kind):
    z1, z2 = views(6, 4, seed=8)
    neg = queue_rows(11, 4)
    base = LOSSES[kind](z1, z2, tau=0.2, negatives=neg)
    perm = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(LOSSES[kind](z1, z2, tau=0.2, negatives=neg[perm]), base)
    scale = torch.rand(11, 1, dtype=torch.float64) * 100 + 1e-3
    torch.testing.assert_close(LOSSES[kind](z1, z2, tau=0.2, negatives=neg * scale), base)
    torch.testing.assert_close(LOSSES[kind](z2, z1, tau=0.2, negatives=neg), base)


def test_without_normalisation_negatives_are_used_as_given():
    z1, z2 = views(4, 3, seed=9)
    u1, u2 = (torch.nn.functional.normalize(v, dim=1) for v in (z1, z2))
    neg = torch.nn.functional.normalize(queue_rows(5, 3), dim=1)
    ref = dcl(u1, u2, tau=0.3, negatives=neg)
    torch.testing.assert_close(dcl(u1, u2, tau=0.3, negatives=neg, normalize=False), ref)
    raw = dcl(u1, u2, tau=0.3, negatives=2 * neg, normalize=False)
    assert not torch.isclose(raw, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(dtype):
    z1, z2 = views(16, 8, seed=10, dtype=torch.float32)
    neg = queue_rows(40, 8, dtype=torch.float32)
    ref = dcl(z1.double(), z2.double(), tau=0.1, negatives=neg.double())
    got = dcl(z1.to(dtype), z2.to(dtype), tau=0.1, negatives=neg.to(dtype))
    assert got.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 0.5
    assert abs(got.item() - ref.item()) < tol


def test_modules_pass_negatives_through():
    z1, z2 = views(5, 4, seed=11)
    neg = queue_rows(3, 4)
    for module, fn, kw in (
        (InfoNCELoss(tau=0.3), info_nce, {}),
        (DCLLoss(tau=0.3), dcl, {}),
        (DCLWLoss(tau=0.3, sigma=0.2), dclw, {"sigma": 0.2}),
    ):
        assert (
            module(z1, z2, negatives=neg).item() == fn(z1, z2, tau=0.3, negatives=neg, **kw).item()
        )
        assert module(z1, z2).item() == fn(z1, z2, tau=0.3, **kw).item()


@pytest.mark.parametrize(
    "negatives,exc,match",
    [
        ([[1.0, 2.0, 3.0]], TypeError, r"negatives must be a torch.Tensor of shape \(K, D\)"),
        (
            torch.ones(3, dtype=torch.float64),
            ValueError,
            r"negatives must be 2-D \(K, D\), got shape \(3,\)",
        ),
        (
            torch.ones(2, 3, 4, dtype=torch.float64),
            ValueError,
            r"2-D \(K, D\), got shape \(2, 3, 4\)",
        ),
        (
            torch.ones(2, 5, dtype=torch.float64),
            ValueError,
            r"D=3 columns like z1 and z2, got shape \(2, 5\)",
        ),
        (torch.ones(2, 3), TypeError, r"dtype of z1 and z2, torch.float64, got torch.float32"),
        (torch.ones(2, 3, dtype=torch.int64), TypeError, r"got torch.int64"),
        (
            torch.ones(2, 3, dtype=torch.float64, device="meta"),
            ValueError,
            r"device of z1 and z2, cpu, got meta",
        ),
        (
            torch.tensor(
                [[1.0, 0, 0], [float("nan"), 0, 0], [0, float("inf"), 1]], dtype=torch.float64
            ),
            ValueError,
            r"non-finite rows \[1, 2\]",
        ),
        (
            torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=torch.float64),
            ValueError,
            r"all-zero rows \[1\]",
        ),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_negatives_are_reported_clearly(negatives, exc, match, kind):
    z1, z2 = views(4, 3)
    with pytest.raises(exc, match=match):
        LOSSES[kind](z1, z2, negatives=negatives)


def test_zero_negative_rows_are_fine_without_normalisation():
    z1, z2 = (torch.nn.functional.normalize(v, dim=1) for v in views(4, 3))
    neg = torch.zeros(2, 3, dtype=torch.float64)  # similarity 0: each adds e^0 = 1 to U_a
    got = dcl(z1, z2, tau=0.5, negatives=neg, normalize=False, reduction="none")
    base = dcl(z1, z2, tau=0.5, normalize=False, reduction="none")
    s_pos = ((z1 * z2).sum(1) / 0.5).repeat(2)  # (2N,)
    # exp(L_a) = (U_a + V_a) / exp(s_pos) with V_a = 2
    torch.testing.assert_close(got.exp(), base.exp() + 2 * (-s_pos).exp(), rtol=1e-12, atol=0)
