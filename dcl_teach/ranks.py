"""Broken DCL 4 up close: a batch split over W ranks, simulated exactly in one process.

Data-parallel DCL gathers every rank's embeddings so that each anchor meets the negatives of the
whole batch. :func:`rank_loss` is one rank's share of the loss. :func:`dcl_two_ranks` runs all
the ranks in one process, and ``grad_through`` (one of ``GRAD_THROUGH``) says which gathered rows
carry gradient back to their owner: all of them, as :func:`dcl_teach.distributed.gather_with_grad`
does, which is DCL exactly; only the rank's own; or none, as ``torch.distributed.all_gather``
returns them, which is :func:`dcl_two_ranks_all_gather`, broken loss 4 of :mod:`dcl_teach.bugs`.
The value is DCL's in all three; only the gradient differs. :func:`all_gather_plain` and
:func:`all_gather_own_rows` are the two faulty gathers themselves, for a real process group;
``tests/test_ranks.py`` runs them in two gloo processes and checks the simulation against them.

Taught in notebook 09.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from dcl_teach.inputs import check_embeddings, check_positive
from dcl_teach.masks import positive_of


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
        >>> from dcl_teach.losses import dcl
        >>> z = torch.eye(4, dtype=torch.float64)
        >>> bool(torch.isclose(rank_loss(z, z, z, z, rank=0), dcl(z, z)))
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

    The value is the same in all three. ``tests/test_ranks.py`` checks the simulation against
    two real gloo processes.

    Args:
        z1, z2, tau, normalize: as in :func:`dcl_teach.bugs.dcl_reference`; N must be a
            multiple of ``world``.
        world: number of ranks W.
        grad_through: ``"all"``, ``"own"`` or ``"none"``.

    Returns:
        0-dim tensor.

    Raises:
        ValueError: N not a multiple of ``world``, a bad ``world`` or ``grad_through``.

    Example:
        >>> from dcl_teach.losses import dcl
        >>> z1, z2 = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64).flip(0)
        >>> bool(torch.isclose(dcl_two_ranks(z1, z2, grad_through="none"), dcl(z1, z2)))
        True

    Taught in notebook 09.
    """
    check_embeddings(z1, z2, min_pairs=2, loss="DCL")
    tau = check_positive("tau", tau)
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
        z1, z2, tau, normalize: as in :func:`dcl_teach.bugs.dcl_reference`; N must be even.

    Returns:
        0-dim tensor.

    Example:
        >>> from dcl_teach.losses import dcl
        >>> z1, z2 = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64).flip(0)
        >>> bool(torch.isclose(dcl_two_ranks_all_gather(z1, z2), dcl(z1, z2)))
        True

    Taught in notebook 09.
    """
    return dcl_two_ranks(z1, z2, tau=tau, normalize=normalize, world=2, grad_through="none")
