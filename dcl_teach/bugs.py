r"""Broken DCL losses, each a mistake that shipped or easily could.

Every broken loss has the signature of the correct one, :func:`dcl_reference`:
``loss(z1, z2, *, tau=0.1, normalize=True) -> 0-dim tensor`` (the mean over the 2N anchors of
Eq. (4.1) of the course). Each runs, returns a finite number and trains; each is wrong in one
precise way that ``tests/test_bugs.py`` pins, and right everywhere else:

====================================  ==========================================================
broken loss                           the mistake
====================================  ==========================================================
:func:`dcl_two_logsumexps`            ``log sum(same view) + log sum(cross view)`` instead of
                                      one log over both (lightly's DCLLoss, 2022 to 2025)
:func:`dcl_eps_mask`                  a soft mask that adds ``eps`` instead of ``log(~0)``: the
                                      anchor and its positive stay in the denominator
:func:`dcl_forgot_normalize`          ``F.normalize`` called and its result thrown away
:func:`dcl_two_ranks_all_gather`      negatives gathered from 2 ranks with
                                      ``torch.distributed.all_gather``, which has no gradient
:func:`dcl_positive_on_diagonal`      the positive read off the diagonal of the 2N x 2N matrix:
                                      ``pos(a)`` off by N, the anchor is its own positive
:func:`dcl_summed`                    a sum over the anchors where the mean was meant
====================================  ==========================================================

Broken loss 4 and the two-rank simulation behind it live in :mod:`dcl_teach.ranks`; the
``passes_*`` tests that catch the six, and :func:`~dcl_teach.bug_checks.grade_test`, in
:mod:`dcl_teach.bug_checks`. Both are importable from here too, as notebook 09 imports them.

Taught in notebook 09.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dcl_teach.bug_checks import (  # noqa: F401  re-exported: notebook 09 imports them from here
    TESTS,
    Loss,
    grade_test,
    passes_aligned_orthogonal,
    passes_anti_aligned,
    passes_below_zero,
    passes_bounds,
    passes_gradient,
    passes_identical,
    passes_rescaling,
    passes_symmetries,
)
from dcl_teach.inputs import check_embeddings, check_positive
from dcl_teach.losses import dcl
from dcl_teach.masks import negative_mask, positive_of
from dcl_teach.ranks import (  # noqa: F401  re-exported: notebook 09 imports them from here
    GRAD_THROUGH,
    all_gather_own_rows,
    all_gather_plain,
    dcl_two_ranks,
    dcl_two_ranks_all_gather,
    rank_loss,
)


def _checked(z1: torch.Tensor, z2: torch.Tensor, tau: float, name: str) -> float:
    """Raise a clear error for inputs no DCL can use; return ``tau`` as a float."""
    check_embeddings(z1, z2, min_pairs=2, loss=name)
    return check_positive("tau", tau)


def dcl_reference(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """The correct DCL loss, Eq. (4.1) of the course, with the signature of the broken ones.

    Args:
        z1: (N, D) first view.
        z2: (N, D) second view.
        tau: temperature, > 0.
        normalize: L2-normalise the rows first.

    Returns:
        0-dim tensor, the mean over the 2N anchors.

    Example:
        >>> z = torch.ones(4, 3, dtype=torch.float64)
        >>> round(dcl_reference(z, z).item(), 4), round(math.log(2 * 4 - 2), 4)
        (1.7918, 1.7918)

    Taught in notebook 09.
    """
    return dcl(z1, z2, tau=tau, normalize=normalize)


def dcl_two_logsumexps(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    r"""Broken DCL 1: one log-sum-exp per block of negatives, added (lightly 2022-2025).

    .. math:: L_a = -s_{a,\mathrm{pos}(a)} + \log \sum_{\text{same view}} e^{s_{a,j}}
              + \log \sum_{\text{cross view}} e^{s_{a,j}}

    Eq. 2 of Yeh et al. puts both views' negatives in one sum. Adding two logs multiplies the
    two sums: per anchor this is DCL plus ``log(S C / (S + C))`` (S, C the two block sums), and
    each block's negatives get softmax weights that sum to 1 on their own.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`.

    Returns:
        0-dim tensor.

    Example:
        >>> z = torch.ones(4, 3, dtype=torch.float64)  # DCL gives log 6 at every tau
        >>> round(dcl_two_logsumexps(z, z, tau=1.0).item(), 4), round(1 + 2 * math.log(3), 4)
        (3.1972, 3.1972)

    Taught in notebook 09.
    """
    tau = _checked(z1, z2, tau, "DCL")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=z1.device)  # (N, N)

    def one_direction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        sim_same = a @ a.T / tau  # (N, N) same view
        sim_cross = a @ b.T / tau  # (N, N) cross view; the positives are on its diagonal
        positive = sim_cross.diagonal()  # (N,)
        neg_same = sim_same[off_diagonal].view(n, n - 1)  # (N, N-1) without the anchor
        neg_cross = sim_cross[off_diagonal].view(n, n - 1)  # (N, N-1) without the positive
        return (-positive + neg_same.logsumexp(dim=1) + neg_cross.logsumexp(dim=1)).mean()

    return 0.5 * (one_direction(z1, z2) + one_direction(z2, z1))


def soft_masked_dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float = 0.1,
    normalize: bool = True,
    mask_value: float = math.log(1e-45),
) -> torch.Tensor:
    """DCL with the anchor and its positive masked by *adding* ``mask_value`` to their logits.

    The unofficial reference implementation masks this way with ``log(1e-45)`` (about -103.6),
    which leaves ``e^{-103.6}`` of each masked term: DCL to about 1e-44. ``-inf`` gives DCL
    exactly. A mask value near 0 masks nothing (:func:`dcl_eps_mask`).

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`.
        mask_value: added to the logits of the anchor itself and of its positive.

    Returns:
        0-dim tensor, the mean of both directions.

    Example:
        >>> z1, z2 = torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        >>> bool(torch.isclose(soft_masked_dcl(z1, z2), dcl_reference(z1, z2)))
        True

    Taught in notebook 09.
    """
    tau = _checked(z1, z2, tau, "DCL")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    mask = torch.eye(n, dtype=torch.bool, device=z1.device).repeat(1, 2)  # (N, 2N) self, positive
    shift = torch.zeros(mask.shape, dtype=z1.dtype, device=z1.device).masked_fill(mask, mask_value)

    def one_direction(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        cross = a @ b.T / tau  # (N, N)
        positive = cross.diagonal()  # (N,)
        logits = torch.cat([a @ a.T / tau, cross], dim=1)  # (N, 2N) same view, then cross view
        negative = torch.logsumexp(logits + shift, dim=1)  # (N,) soft mask: added
        return (-positive + negative).mean()

    return 0.5 * (one_direction(z1, z2) + one_direction(z2, z1))


def dcl_eps_mask(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    r"""Broken DCL 2: the soft mask with ``eps`` where ``log(1e-45)`` was meant.

    ``torch.finfo(dtype).eps`` is the smallest number that changes 1.0, a natural-looking
    "tiny" value; but the mask is *added to logits*, so it must be hugely negative. Adding
    +2e-16 removes nothing: the anchor itself (``e^{1/tau}``) and its positive stay in the
    denominator, which is then larger than the numerator, and the loss can never go below 0.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`.

    Returns:
        0-dim tensor.

    Example:
        >>> z = torch.ones(4, 3, dtype=torch.float64)  # all 2N logits equal: log(2N), not log(2N-2)
        >>> round(dcl_eps_mask(z, z).item(), 4), round(math.log(8), 4)
        (2.0794, 2.0794)

    Taught in notebook 09.
    """
    eps = torch.finfo(z1.dtype).eps if z1.is_floating_point() else 0.0
    return soft_masked_dcl(z1, z2, tau=tau, normalize=normalize, mask_value=eps)


def _dcl_dense(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-anchor DCL (2N,) of rows used as they are."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    s = z @ z.T / tau  # (2N, 2N)
    rows = torch.arange(2 * n, device=z.device)  # (2N,)
    s_pos = s[rows, positive_of(rows, 2 * n)]  # (2N,)
    s_neg = s.masked_fill(~negative_mask(n, device=z.device), float("-inf"))  # (2N, 2N)
    return s_neg.logsumexp(dim=1) - s_pos  # (2N,)


def dcl_forgot_normalize(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """Broken DCL 3: ``F.normalize`` is called but not assigned, so nothing is normalised.

    ``F.normalize`` returns a new tensor; it does not change its argument. The similarities
    are then dot products of raw embeddings: an encoder can lower the loss by growing the norms.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`; ``normalize`` has no effect.

    Returns:
        0-dim tensor.

    Example:
        >>> z1, z2 = torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        >>> bool(torch.isclose(dcl_forgot_normalize(z1, z2), dcl_reference(z1, z2)))  # unit rows
        True
        >>> bool(torch.isclose(dcl_forgot_normalize(2 * z1, 2 * z2), dcl_reference(2 * z1, 2 * z2)))
        False

    Taught in notebook 09.
    """
    tau = _checked(z1, z2, tau, "DCL")
    if normalize:
        F.normalize(z1, dim=1)  # the mistake: the unit rows are returned and dropped
        F.normalize(z2, dim=1)
    return _dcl_dense(z1, z2, tau).mean()


def dcl_positive_on_diagonal(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    r"""Broken DCL 5: the positive read off the diagonal, ``pos(a)`` off by N.

    In the N x N matrix ``z1 @ z2.T`` the positives are on the diagonal; in the stacked
    2N x 2N matrix ``z @ z.T`` the diagonal is each anchor with *itself*, a constant
    ``1/tau`` for unit rows. The loss then never pulls a positive pair together: it only
    spreads the batch out.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`.

    Returns:
        0-dim tensor.

    Example:
        >>> z1 = torch.eye(3, dtype=torch.float64)
        >>> bool(torch.isclose(dcl_positive_on_diagonal(z1, -z1), dcl_reference(z1, -z1)))
        False

    Taught in notebook 09.
    """
    tau = _checked(z1, z2, tau, "DCL")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    s = z @ z.T / tau  # (2N, 2N)
    s_pos = s.diagonal()  # (2N,) the mistake: these are s[a, a], not s[a, pos(a)]
    s_neg = s.masked_fill(~negative_mask(n, device=z.device), float("-inf"))  # (2N, 2N)
    return (s_neg.logsumexp(dim=1) - s_pos).mean()


def dcl_summed(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """Broken DCL 6: ``.sum()`` over the 2N anchors where ``.mean()`` was meant.

    The value and the gradient are 2N times the mean's: SGD at a learning rate tuned for the
    mean takes steps 2N times too long, and changing the batch size changes the step.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`.

    Returns:
        0-dim tensor.

    Example:
        >>> z = torch.ones(4, 3, dtype=torch.float64)
        >>> round(dcl_summed(z, z).item(), 4), round(8 * math.log(6), 4)
        (14.3341, 14.3341)

    Taught in notebook 09.
    """
    tau = _checked(z1, z2, tau, "DCL")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    return _dcl_dense(z1, z2, tau).sum()  # the mistake: .sum() where .mean() was meant


BROKEN: dict[str, Loss] = {
    "two logsumexps": dcl_two_logsumexps,
    "eps mask": dcl_eps_mask,
    "forgot normalize": dcl_forgot_normalize,
    "all_gather": dcl_two_ranks_all_gather,
    "positive on diagonal": dcl_positive_on_diagonal,
    "sum, not mean": dcl_summed,
}
"""The six broken losses, in the order of notebook 09."""
