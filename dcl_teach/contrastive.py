"""The one routine behind :func:`dcl_teach.losses.info_nce`, ``dcl`` and ``dclw``.

Each loss checks its input, stacks the two views, normalises the rows, computes the DCLW
weights when it needs them, and hands the stacked batch to a kernel; only ``decoupled`` (is
the positive in the denominator?) and ``sigma`` (weights or ones) tell the three apart.
:func:`contrastive` does this once for all three. It picks the kernel: in one process, without
extra negatives, the symmetric kernel of :mod:`dcl_teach.symmetric`, which normalises the rows
itself; with gathered candidates or a memory queue, the row-block kernel of
:mod:`dcl_teach.fused`; with ``impl="dense"`` or ``reduction="none"``, the full matrix.

Taught in notebook 04.
"""

from __future__ import annotations

from functools import partial

import torch

from dcl_teach import distributed as dist_utils
from dcl_teach.fused import dense_rows, fused_rows
from dcl_teach.inputs import (
    _compute_dtype,
    check_embeddings,
    check_negatives,
    check_positive,
    normalize_rows,
    row_peaks,
)
from dcl_teach.symmetric import fused_symmetric

REDUCTIONS = ("mean", "sum", "none")
IMPLEMENTATIONS = ("fused", "dense")


def vmf_weights_from_cosines(c: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """DCLW weights ``w_i = 2 - exp(c_i / sigma) / mean_j exp(c_j / sigma)`` from cosines ``c``.

    Computed as ``2 - N * softmax(c / sigma)``, which is the same number without overflow.

    Args:
        c: (N,) cosine similarity of each positive pair.
        sigma: width of the weighting, > 0.

    Returns:
        (N,) weights; they average to exactly 1 and can be negative for outlier pairs.

    Example:
        >>> vmf_weights_from_cosines(torch.tensor([0.5, 0.5, 0.5]), sigma=0.5).tolist()
        [1.0, 1.0, 1.0]

    Taught in notebook 05.
    """
    return 2.0 - c.shape[0] * torch.softmax(c / sigma, dim=0)  # (N,)


def _check_options(
    tau: object, sigma: object, reduction: str, impl: str, block_size: object
) -> tuple[float, float | None]:
    """Raise a clear error for a bad option; return tau and sigma as floats."""
    tau = check_positive("tau", tau)
    if sigma is not None:
        sigma = check_positive("sigma", sigma)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    if block_size is not None and (
        isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1
    ):
        raise ValueError(f"block_size must be a positive int or None, got {block_size!r}")
    return tau, sigma


def _pair_weights(z: torch.Tensor, sigma: float, rank: int) -> torch.Tensor:
    """(2n,) DCLW weights of this rank's anchors from its rows ``z = [z1; z2]`` (2n, D), as the
    loss uses them (unit rows unless ``normalize=False``): detached, over the whole (gathered)
    batch (see :func:`dcl_teach.losses.dclw`), both anchors of a pair sharing its weight."""
    n = z.shape[0] // 2
    z = z.detach()  # (2n, D)
    c = torch.linalg.vecdot(z[:n], z[n:])  # (n,) cosines of the positive pairs
    c_all = dist_utils.gather_no_grad(c)  # (nW,)
    w = vmf_weights_from_cosines(c_all, sigma=sigma)[rank * n : (rank + 1) * n]  # (n,)
    return torch.cat([w, w])  # (2n,)


def _candidates(
    za: torch.Tensor, rank: int, world: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The candidates (2nW, D) of this rank's anchors ``za = [z1; z2]`` (2n, D) and each
    anchor's row among them (2n,): the anchors themselves in one process (no rows needed by
    the symmetric kernel), both views gathered from every rank otherwise."""
    n = za.shape[0] // 2
    if world == 1:
        rows = None if symmetric else torch.arange(2 * n, device=za.device)  # (2N,)
        return za, rows
    z1_all = dist_utils.gather_with_grad(za[:n])  # (nW, D)
    z2_all = dist_utils.gather_with_grad(za[n:])  # (nW, D)
    local = torch.arange(n, device=za.device) + rank * n  # (n,)
    return torch.cat([z1_all, z2_all]), torch.cat([local, local + n * world])


def contrastive(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float,
    decoupled: bool,
    sigma: float | None,
    normalize: bool,
    reduction: str,
    gather_distributed: bool,
    block_size: int | None,
    impl: str,
    name: str,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss of :func:`dcl_teach.losses.info_nce`, ``dcl`` or ``dclw``, by the right kernel.

    Args:
        z1, z2, tau, sigma, normalize, reduction, gather_distributed, block_size, impl,
            negatives: as in :func:`dcl_teach.losses.dclw` (``sigma=None``: weights of 1).
        decoupled: drop the positive from the denominator (DCL, DCLW).
        name: the loss's name, for error messages.

    Returns:
        0-dim tensor, or (2N,) with ``reduction="none"``.

    Example:
        >>> import math
        >>> z = torch.ones(4, 3)
        >>> loss = contrastive(z, z, tau=1.0, decoupled=True, sigma=None, normalize=True,
        ...     reduction="mean", gather_distributed=False, block_size=None, impl="fused",
        ...     name="DCL")
        >>> round(loss.item(), 4) == round(math.log(2 * 4 - 2), 4)
        True

    Taught in notebook 04.
    """
    tau, sigma = _check_options(tau, sigma, reduction, impl, block_size)
    check_embeddings(z1, z2, min_pairs=2 if decoupled else 1, loss=name, check_values=False)
    n = z1.shape[0]
    za = torch.cat([z1, z2])  # (2n, D) this rank's anchors
    peaks = row_peaks(za, n, nonzero_rows=normalize)  # (2n,) one check, one transfer
    if negatives is not None:
        neg_peaks = check_negatives(negatives, z1, nonzero_rows=normalize)  # (K,)
        # constants, whatever the caller passed: a queue is never trained through the loss
        negatives = negatives.detach()
    rank, world = dist_utils.world_info() if gather_distributed else (0, 1)
    # one process, no extra negatives: the symmetric kernel, which normalises the rows itself
    symmetric = impl == "fused" and world == 1 and negatives is None and reduction != "none"

    with torch.autocast(device_type=z1.device.type, enabled=False):
        dtype = _compute_dtype(z1)
        za, peaks = za.to(dtype), peaks.to(dtype)  # (2n, D), (2n,)
        if normalize and not symmetric:
            za = normalize_rows(za, peaks)  # (2n, D)
        if negatives is not None:
            negatives = negatives.to(dtype)  # (K, D)
            if normalize:
                negatives = normalize_rows(negatives, neg_peaks.to(dtype))  # (K, D)

        zc, rows = _candidates(za, rank, world, symmetric)  # (2nW, D), (2n,) or None
        if sigma is None:
            weights = torch.ones(2 * n, dtype=dtype, device=za.device)  # (2n,)
        elif symmetric:  # the kernel computes them from the rows it normalises itself
            weights = partial(vmf_weights_from_cosines, sigma=sigma)
        else:
            weights = _pair_weights(za, sigma, rank)  # (2n,)

        if reduction == "none":
            return dense_rows(
                za, zc, rows, weights, tau=tau, decoupled=decoupled, negatives=negatives
            )  # (2n,)
        # DDP averages gradients over ranks; scaling the local share so that this average is
        # the gradient of the global loss: 1/(2n) for the mean, W for the sum.
        scale = 1.0 / (2 * n) if reduction == "mean" else float(world)
        if symmetric:
            # one process: the candidates are the anchors, S is symmetric, half of it suffices
            loss = fused_symmetric(
                za,
                weights,
                tau=tau,
                decoupled=decoupled,
                block_size=block_size,
                scale=scale,
                peaks=peaks if normalize else None,
            )
        elif impl == "fused":
            # gathered candidates, or extra negatives (K more columns): not square any more
            loss = fused_rows(
                za,
                zc,
                rows,
                weights,
                tau=tau,
                decoupled=decoupled,
                block_size=block_size,
                scale=scale,
                negatives=negatives,
            )
        else:
            loss = dense_rows(
                za, zc, rows, weights, tau=tau, decoupled=decoupled, negatives=negatives
            )
            loss = loss.sum() * scale
        if world > 1:
            # Report the loss of the whole global batch on every rank; the gradient stays local.
            reported = dist_utils.mean_over_ranks(loss)
            loss = loss + (reported - loss).detach()
        return loss
