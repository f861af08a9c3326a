r"""Broken DCL losses, each a mistake that shipped or easily could, and the tests that catch them.

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

The ``passes_*`` functions are tests, one tool of the course each: ``test(loss) -> bool``,
True when the loss behaves as DCL must. :func:`grade_test` turns two self-checks of a learner's
test (on a broken loss and on the correct one) into one verdict.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dcl_teach.exercises import Verdict
from dcl_teach.grads import dcl_grad
from dcl_teach.inputs import check_embeddings, check_positive
from dcl_teach.losses import dcl
from dcl_teach.masks import negative_mask, positive_of

Loss = Callable[..., torch.Tensor]


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


def rank_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    z1_all: torch.Tensor,
    z2_all: torch.Tensor,
    *,
    rank: int,
    tau: float = 0.1,
) -> torch.Tensor:
    """DCL of one rank's 2n anchors against the 2nW candidates gathered from all W ranks.

    The rows are used as they are (unit rows expected). Rank ``r`` holds rows
    ``r n .. (r + 1) n - 1`` of each gathered view.

    Args:
        z1: (n, D) this rank's first view.
        z2: (n, D) this rank's second view.
        z1_all: (nW, D) the first view of every rank, rank 0 first.
        z2_all: (nW, D) the second view of every rank.
        rank: this rank's index r.
        tau: temperature, > 0.

    Returns:
        0-dim tensor, the mean over this rank's 2n anchors.

    Raises:
        ValueError: for gathered tensors whose rows do not split into ranks of n.

    Example:
        >>> z = torch.eye(4, dtype=torch.float64)
        >>> bool(torch.isclose(rank_loss(z, z, z, z, rank=0), dcl_reference(z, z)))
        True

    Taught in notebook 09.
    """
    tau = check_positive("tau", tau)
    n, total = z1.shape[0], z1_all.shape[0]
    if z2.shape[0] != n or z2_all.shape[0] != total or total % n or not 0 <= rank < total // n:
        raise ValueError(
            f"expected local views of n rows and gathered views of n * W rows with 0 <= rank < W, "
            f"got {z1.shape[0]}/{z2.shape[0]} local rows, {total}/{z2_all.shape[0]} gathered "
            f"rows and rank {rank}"
        )
    anchors = torch.cat([z1, z2])  # (2n, D)
    candidates = torch.cat([z1_all, z2_all])  # (2nW, D)
    local = torch.arange(n, device=z1.device) + rank * n  # (n,) this rank's rows in a view
    rows = torch.cat([local, local + total])  # (2n,) the anchors' places among the candidates
    s = anchors @ candidates.T / tau  # (2n, 2nW)
    pos = positive_of(rows, 2 * total)  # (2n,)
    s_pos = s.gather(1, pos[:, None]).squeeze(1)  # (2n,)
    keep = torch.ones_like(s, dtype=torch.bool)  # (2n, 2nW)
    keep[torch.arange(2 * n), rows] = False  # not the anchor itself
    keep[torch.arange(2 * n), pos] = False  # not its positive
    return (s.masked_fill(~keep, float("-inf")).logsumexp(dim=1) - s_pos).mean()


def all_gather_plain(x: torch.Tensor) -> torch.Tensor:
    """Broken DCL 4, the gather: ``torch.distributed.all_gather`` into fresh buffers.

    The buffers are filled in place by a communication call that autograd does not record:
    the result has no gradient history, not even for this rank's own rows. Use
    :func:`dcl_teach.distributed.gather_with_grad` instead.

    Args:
        x: (n, D) this rank's rows (an initialised process group is required).

    Returns:
        (nW, D) every rank's rows, detached.

    Taught in notebook 09.
    """
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)  # (nW, D)


def all_gather_own_rows(x: torch.Tensor) -> torch.Tensor:
    """The half fix of :func:`all_gather_plain`: put this rank's own rows back, with gradient.

    Gradient now reaches this rank's rows through its own loss, but never from the other
    ranks' losses, which also use these rows as negatives.

    Args:
        x: (n, D) this rank's rows (an initialised process group is required).

    Returns:
        (nW, D) every rank's rows; only this rank's carry gradient.

    Taught in notebook 09.
    """
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)  # (nW, D)


GRAD_THROUGH = ("all", "own", "none")


def dcl_two_ranks(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float = 0.1,
    normalize: bool = True,
    world: int = 2,
    grad_through: str = "all",
) -> torch.Tensor:
    """DCL of a batch split over ``world`` ranks, simulated exactly in one process.

    Rank r holds rows ``r n .. (r + 1) n - 1`` of each view, gathers every rank's rows and
    computes :func:`rank_loss`. Data parallelism averages the ranks' gradients, so the
    simulated loss is the mean of the rank losses. ``grad_through`` says which gathered rows
    carry gradient back to the rank that owns them:

    * ``"all"``: every row, as :func:`dcl_teach.distributed.gather_with_grad` does with an
      all-reduce in its backward. The result is DCL, value and gradient.
    * ``"own"``: only the rank's own rows (``parts[rank] = x`` after ``all_gather``; also
      what lightly's gather layer did before v1.5.4). A rank never receives the gradient that
      the *other* ranks' anchors send to its rows.
    * ``"none"``: no row, as ``torch.distributed.all_gather`` returns them. Only the gradient
      through each rank's own anchors survives.

    The value is the same in all three. ``tests/test_bugs.py`` checks the simulation against
    two real gloo processes.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`; N must be a multiple of ``world``.
        world: number of ranks W.
        grad_through: ``"all"``, ``"own"`` or ``"none"``.

    Returns:
        0-dim tensor.

    Raises:
        ValueError: N not a multiple of ``world``, a bad ``world`` or ``grad_through``.

    Example:
        >>> z1, z2 = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64).flip(0)
        >>> bool(torch.isclose(dcl_two_ranks(z1, z2, grad_through="none"), dcl_reference(z1, z2)))
        True

    Taught in notebook 09.
    """
    tau = _checked(z1, z2, tau, "DCL")
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be a positive int, got {world!r}")
    if grad_through not in GRAD_THROUGH:
        raise ValueError(f"grad_through must be one of {GRAD_THROUGH}, got {grad_through!r}")
    if z1.shape[0] % world:
        raise ValueError(f"N = {z1.shape[0]} pairs do not split evenly over {world} ranks")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    n = z1.shape[0] // world
    parts1, parts2 = z1.split(n), z2.split(n)  # W tensors of (n, D) each

    def gathered(parts: tuple[torch.Tensor, ...], rank: int) -> torch.Tensor:
        keep = [
            grad_through == "all" or (grad_through == "own" and q == rank) for q in range(world)
        ]
        return torch.cat([p if k else p.detach() for p, k in zip(parts, keep)])  # (nW, D)

    losses = [
        rank_loss(parts1[r], parts2[r], gathered(parts1, r), gathered(parts2, r), rank=r, tau=tau)
        for r in range(world)
    ]
    return torch.stack(losses).mean()  # DDP's average of the ranks' gradients


def dcl_two_ranks_all_gather(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """Broken DCL 4: two ranks that gather their negatives with ``all_gather`` (no gradient).

    The value is DCL's; the gradient lacks every path through a gathered copy, i.e. the
    "candidate" half of Eq. (4.4) of the course. :func:`dcl_two_ranks` with
    ``grad_through="none"``.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_reference`; N must be even.

    Returns:
        0-dim tensor.

    Example:
        >>> z1, z2 = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64).flip(0)
        >>> bool(torch.isclose(dcl_two_ranks_all_gather(z1, z2), dcl_reference(z1, z2)))
        True

    Taught in notebook 09.
    """
    return dcl_two_ranks(z1, z2, tau=tau, normalize=normalize, world=2, grad_through="none")


BROKEN: dict[str, Loss] = {
    "two logsumexps": dcl_two_logsumexps,
    "eps mask": dcl_eps_mask,
    "forgot normalize": dcl_forgot_normalize,
    "all_gather": dcl_two_ranks_all_gather,
    "positive on diagonal": dcl_positive_on_diagonal,
    "sum, not mean": dcl_summed,
}
"""The six broken losses, in the order of notebook 09."""


# --- tests: one tool of the course each; True means "behaves as DCL must" ---------------------


def _close(value: torch.Tensor | float, target: float) -> bool:
    return math.isclose(float(value), target, rel_tol=1e-9, abs_tol=1e-9)


def passes_identical(loss: Loss) -> bool:
    """Closed form: all 2N embeddings identical give log(2N - 2) at every temperature.

    Example:
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
        >>> passes_below_zero(dcl_reference), passes_below_zero(dcl_eps_mask)
        (True, False)

    Taught in notebook 09.
    """
    z = torch.eye(4, dtype=torch.float64)  # (N, D)
    return float(loss(z, z, tau=0.1)) < 0


def passes_bounds(loss: Loss) -> bool:
    """Bounds: on random batches, log(2N-2) - 2/tau <= L <= log(2N-2) + 2/tau, Eq. (4.3) and its mirror.

    Example:
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
