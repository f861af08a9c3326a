"""The reference tests of notebook 09: one tool of the course each, and the grading of a learner's.

A test takes a loss with the signature of :func:`dcl_teach.bugs.dcl_reference` and returns True
when the loss behaves as DCL must. Closed forms (:func:`passes_identical`,
:func:`passes_aligned_orthogonal`, :func:`passes_anti_aligned`), a sign and bounds
(:func:`passes_below_zero`, :func:`passes_bounds`), invariances (:func:`passes_rescaling`,
:func:`passes_symmetries`) and the analytic gradient (:func:`passes_gradient`); ``TESTS`` holds
all eight. Which of them catches which broken loss of :mod:`dcl_teach.bugs` is pinned in
``tests/test_bug_checks.py``: no single one catches all six. :func:`grade_test` turns two
self-checks of a learner's test (on a broken loss and on the correct one) into one verdict.

Taught in notebook 09.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dcl_teach.exercises import Verdict
from dcl_teach.grads import dcl_grad

Loss = Callable[..., torch.Tensor]  # a loss with the signature of dcl_teach.bugs.dcl_reference


def _close(value: torch.Tensor | float, target: float) -> bool:
    return math.isclose(float(value), target, rel_tol=1e-9, abs_tol=1e-9)


def passes_identical(loss: Loss) -> bool:
    """Closed form: all 2N embeddings identical give log(2N - 2) at every temperature.

    Example:
        >>> from dcl_teach.bugs import dcl_reference, dcl_two_logsumexps
        >>> passes_identical(dcl_reference), passes_identical(dcl_two_logsumexps)
        (True, False)

    Taught in notebook 09.
    """
    for n in (2, 4):
        z = torch.ones(n, 3, dtype=torch.float64)  # (N, D)
        for tau in (0.1, 1.0):
            if not _close(loss(z, z, tau=tau), math.log(2 * n - 2)):
                return False
    return True


def passes_aligned_orthogonal(loss: Loss) -> bool:
    """Closed form: ``z1 = z2 = eye(D)[:N]`` gives log(2N - 2) - 1/tau.

    Example:
        >>> from dcl_teach.bugs import dcl_eps_mask, dcl_reference
        >>> passes_aligned_orthogonal(dcl_reference), passes_aligned_orthogonal(dcl_eps_mask)
        (True, False)

    Taught in notebook 09.
    """
    for n in (2, 4):
        z = torch.eye(6, dtype=torch.float64)[:n]  # (N, D)
        for tau in (0.2, 1.0):
            if not _close(loss(z, z, tau=tau), math.log(2 * n - 2) - 1 / tau):
                return False
    return True


def passes_anti_aligned(loss: Loss) -> bool:
    """Closed form with different views: ``z1 = eye(D)[:N]``, ``z2 = -z1`` gives log(2N-2) + 1/tau.

    Example:
        >>> from dcl_teach.bugs import dcl_positive_on_diagonal, dcl_reference
        >>> passes_anti_aligned(dcl_reference), passes_anti_aligned(dcl_positive_on_diagonal)
        (True, False)

    Taught in notebook 09.
    """
    for n in (2, 4):
        z1 = torch.eye(6, dtype=torch.float64)[:n]  # (N, D)
        for tau in (0.2, 1.0):
            if not _close(loss(z1, -z1, tau=tau), math.log(2 * n - 2) + 1 / tau):
                return False
    return True


def passes_rescaling(loss: Loss) -> bool:
    """Invariance: rescaling each raw embedding by a positive number changes nothing.

    Example:
        >>> from dcl_teach.bugs import dcl_forgot_normalize, dcl_reference
        >>> passes_rescaling(dcl_reference), passes_rescaling(dcl_forgot_normalize)
        (True, False)

    Taught in notebook 09.
    """
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)  # (N, D)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64)  # (N, D)
    c1 = torch.rand(6, 1, generator=g, dtype=torch.float64) * 10 + 0.1  # (N, 1) row scales
    c2 = torch.rand(6, 1, generator=g, dtype=torch.float64) * 10 + 0.1  # (N, 1)
    return _close(loss(c1 * z1, c2 * z2, tau=0.2), float(loss(z1, z2, tau=0.2)))


def passes_gradient(loss: Loss) -> bool:
    """Autograd against the analytic gradient (4.2), :func:`dcl_teach.grads.dcl_grad`.

    Example:
        >>> from dcl_teach.bugs import dcl_reference, dcl_two_ranks_all_gather
        >>> passes_gradient(dcl_reference), passes_gradient(dcl_two_ranks_all_gather)
        (True, False)

    Taught in notebook 09.
    """
    g = torch.Generator().manual_seed(1)
    z1 = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)  # (N, D)
    z2 = F.normalize(z1 + torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    auto = torch.autograd.grad(loss(*leaves, tau=0.2, normalize=False), leaves)
    return all(
        torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(auto, dcl_grad(z1, z2, tau=0.2))
    )


def passes_below_zero(loss: Loss) -> bool:
    """Sign: with identical positives and orthogonal negatives at tau = 0.1, DCL is negative.

    (The value is log(2N - 2) - 1/tau, Eq. (4.3)'s argument with cosines 1 and 0.) A loss
    that keeps the positive in its denominator can never go below zero.

    Example:
        >>> from dcl_teach.bugs import dcl_eps_mask, dcl_reference
        >>> passes_below_zero(dcl_reference), passes_below_zero(dcl_eps_mask)
        (True, False)

    Taught in notebook 09.
    """
    z = torch.eye(4, dtype=torch.float64)  # (N, D)
    return float(loss(z, z, tau=0.1)) < 0


def passes_bounds(loss: Loss) -> bool:
    """Bounds: on random batches, log(2N-2) - 2/tau <= L <= log(2N-2) + 2/tau, Eq. (4.3) and its mirror.

    Example:
        >>> from dcl_teach.bugs import dcl_reference, dcl_summed
        >>> passes_bounds(dcl_reference), passes_bounds(dcl_summed)
        (True, False)

    Taught in notebook 09.
    """
    g = torch.Generator().manual_seed(2)
    for n in (2, 8):
        for tau in (0.1, 0.5):
            for _ in range(5):
                z1 = torch.randn(n, 3, generator=g, dtype=torch.float64)  # (N, D)
                z2 = torch.randn(n, 3, generator=g, dtype=torch.float64)  # (N, D)
                value = float(loss(z1, z2, tau=tau))
                if not abs(value - math.log(2 * n - 2)) <= 2 / tau + 1e-12:
                    return False
    return True


def passes_symmetries(loss: Loss) -> bool:
    """Invariances: swapping the views and permuting the pairs change nothing.

    Example:
        >>> from dcl_teach.bugs import dcl_reference, dcl_summed
        >>> passes_symmetries(dcl_reference), passes_symmetries(dcl_summed)  # catches none of the six
        (True, True)

    Taught in notebook 09.
    """
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)  # (N, D)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64)  # (N, D)
    perm = torch.randperm(6, generator=g)  # (N,)
    base = float(loss(z1, z2, tau=0.2))
    return _close(loss(z2, z1, tau=0.2), base) and _close(loss(z1[perm], z2[perm], tau=0.2), base)


TESTS: dict[str, Callable[[Loss], bool]] = {
    "symmetries": passes_symmetries,
    "identical": passes_identical,
    "aligned-orthogonal": passes_aligned_orthogonal,
    "below zero": passes_below_zero,
    "rescaling": passes_rescaling,
    "gradient": passes_gradient,
    "anti-aligned": passes_anti_aligned,
    "bounds": passes_bounds,
}
"""The reference tests of notebook 09, by the tool they use."""


def grade_test(on_broken: Verdict, on_correct: Verdict) -> Verdict:
    """One verdict for a learner's test from two self-checks, and print it.

    A test must *fail* the broken loss (``check(..., broken, expected=False)``) and *pass* the
    correct one (``check(..., correct, expected=True)``); both checks are run with
    ``quiet=True`` and this prints the combined message.

    Args:
        on_broken: the verdict of the learner's test run on the broken loss.
        on_correct: the verdict of the same test run on the correct loss.

    Returns:
        "correct" only when both are; "missing" or "error" when either is; else "wrong",
        with a message saying which loss the test misjudged.

    Raises:
        ValueError: for verdicts of two different exercises.

    Example:
        >>> ok, no = Verdict("9.1", "correct", ""), Verdict("9.1", "wrong", "")
        >>> grade_test(no, ok).status
        Exercise 9.1: not yet right: your test passes the broken loss (it must fail it).
        'wrong'

    Taught in notebook 09.
    """
    number = on_broken.exercise
    if on_correct.exercise != number:
        raise ValueError(f"verdicts of exercises {number} and {on_correct.exercise}")
    for status in ("missing", "error"):
        for verdict, which in ((on_broken, "broken"), (on_correct, "correct")):
            if verdict.status == status:
                message = verdict.message
                if status == "error":
                    message = message.replace(
                        "your code raised", f"on the {which} loss, your test raised"
                    )
                result = Verdict(number, status, message)
                print(result.message)
                return result
    for verdict in (on_broken, on_correct):
        if "wrong type" in verdict.message:  # the test returned something other than a bool
            got = verdict.message.split("wrong type: ")[-1]
            result = Verdict(
                number,
                "wrong",
                f"Exercise {number}: not yet right: a test must return True or False; {got}",
            )
            print(result.message)
            return result
    problems = []
    if not on_broken.ok:
        problems.append("passes the broken loss (it must fail it)")
    if not on_correct.ok:
        problems.append("fails the correct loss (it must pass it)")
    if problems:
        result = Verdict(
            number,
            "wrong",
            f"Exercise {number}: not yet right: your test {' and '.join(problems)}.",
        )
    else:
        result = Verdict(
            number,
            "correct",
            f"Exercise {number}: correct: your test fails the broken loss and passes the correct one.",
        )
    print(result.message)
    return result
