"""What the losses accept: checks with clear messages, and a normalisation that works at any scale.

Every loss of :mod:`dcl_teach.losses` (and the gradients of :mod:`dcl_teach.grads`) checks its
input here first: two embedding tensors of the same shape, dtype and device, finite, enough
pairs for the loss, a positive temperature, extra negatives of the right width. A wrong input
raises a ``ValueError`` or ``TypeError`` that says what was given and what is expected, never a
PyTorch-internal message or a silent NaN. :func:`normalize_rows` then puts every row on the
unit sphere, whatever its scale.

Taught in notebook 01.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_positive(name: str, value: object) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number > 0, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _is_transformed(z: torch.Tensor) -> bool:
    """True inside ``torch.func`` transforms (``vmap``, ``grad``, ...), which wrap tensors."""
    try:
        from torch._C._functorch import is_functorch_wrapped_tensor
    except ImportError:  # pragma: no cover - an older or newer torch without the private check
        return False
    return bool(is_functorch_wrapped_tensor(z))


def check_embeddings(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    min_pairs: int,
    loss: str,
    nonzero_rows: bool = False,
    check_values: bool = True,
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` for views the losses cannot use.

    The value checks (non-finite entries, and all-zero rows when ``nonzero_rows``, i.e. when
    the rows will be normalised) are batched into one device-to-host transfer.

    Example:
        >>> check_embeddings(torch.zeros(1, 4), torch.zeros(1, 4), min_pairs=2, loss="DCL")
        Traceback (most recent call last):
        ...
        ValueError: DCL needs at least 2 pairs (N >= 2) so that every anchor has a negative, got N=1
    """
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor of shape (N, D), got {type(z).__name__}"
            )
        if _is_transformed(z):
            raise TypeError(
                f"{name} is wrapped by a torch.func transform (vmap, grad, jacrev, ...), which the "
                f"contrastive losses do not support: they check the values of the batch and run "
                f"a custom autograd kernel. Call the loss on each batch and use torch.autograd"
            )
        if z.is_meta:
            raise ValueError(
                f"{name} is a meta tensor (shape only, no values); the losses need real values: "
                f"pass tensors on the CPU or a GPU"
            )
        if z.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(
                f"{name} must have a floating dtype (float32, bfloat16, ...), got {z.dtype}"
            )
    if z1.shape != z2.shape:
        raise ValueError(
            f"z1 and z2 must have the same shape (N, D), got {tuple(z1.shape)} and {tuple(z2.shape)}"
        )
    if z1.dtype != z2.dtype:
        # Promoting silently would hide a model that emits two precisions; the loss would run
        # in the lower one if it followed z1 alone.
        raise TypeError(
            f"z1 and z2 must have the same dtype, got {z1.dtype} and {z2.dtype}: convert one "
            f"with .to(...) first"
        )
    if z1.device != z2.device:
        raise ValueError(f"z1 and z2 must be on the same device, got {z1.device} and {z2.device}")
    n, d = z1.shape
    if d == 0:
        raise ValueError("embeddings must have at least one dimension, got D=0")
    if n < min_pairs:
        why = " so that every anchor has a negative" if min_pairs >= 2 else ""
        plural = "pair" if min_pairs == 1 else "pairs"
        raise ValueError(
            f"{loss} needs at least {min_pairs} {plural} (N >= {min_pairs}){why}, got N={n}"
        )
    if check_values:
        _value_check(z1, z2, nonzero_rows=nonzero_rows)


def _value_check(z1: torch.Tensor, z2: torch.Tensor, *, nonzero_rows: bool) -> torch.Tensor:
    """:func:`row_peaks` of ``cat([z1, z2])``."""
    return row_peaks(torch.cat([z1, z2]), z1.shape[0], nonzero_rows=nonzero_rows)


def row_peaks(z: torch.Tensor, n: int, *, nonzero_rows: bool) -> torch.Tensor:
    """Check the stacked views ``z = [z1; z2]`` and return their row peaks ``max_j |z[a, j]|``.

    One reduction and one device-to-host transfer: the smallest and the largest peak say
    whether any entry is non-finite (a NaN or an inf makes the largest one so) and, when
    ``nonzero_rows`` (the rows will be normalised), whether any row is all zero. Only then are
    the offending view and rows looked up, for the message.

    Args:
        z: (2N, D) the two views stacked.
        n: N, the rows of ``z1``.
        nonzero_rows: also reject all-zero rows.

    Returns:
        (2N,) row peaks, which :func:`normalize_rows` reuses.

    Raises:
        ValueError: non-finite values, or all-zero rows, naming the view (and the rows).

    Example:
        >>> row_peaks(torch.tensor([[1.0, -3.0], [0.0, 0.0]]), 1, nonzero_rows=True)
        Traceback (most recent call last):
        ...
        ValueError: z2 has all-zero rows [0]: a zero embedding cannot be normalised
    """
    peaks = z.detach().abs().amax(dim=1)  # (2N,) NaN propagates
    low, high = torch.stack(torch.aminmax(peaks)).tolist() if z.shape[0] else (1.0, 1.0)
    if not math.isfinite(high):
        for name, view in (("z1", z[:n]), ("z2", z[n:])):
            bad = int((~torch.isfinite(view)).sum())
            if bad:
                raise ValueError(f"{name} contains {bad} non-finite values (NaN or inf)")
    if nonzero_rows and not low > 0:
        for name, view in (("z1", z[:n]), ("z2", z[n:])):
            rows = torch.nonzero(~(view != 0).any(dim=1)).flatten()[:5].tolist()
            if rows:
                raise ValueError(
                    f"{name} has all-zero rows {rows}: a zero embedding cannot be normalised"
                )
    return peaks


def check_negatives(negatives: object, z1: torch.Tensor, *, nonzero_rows: bool) -> torch.Tensor:
    """Check extra negatives against the views; return their (K,) row peaks ``max_j |n[k, j]|``.

    Args:
        negatives: the ``negatives=`` argument of the losses, expected (K, D), K >= 0.
        z1: the first view (already checked), which fixes D, the dtype and the device.
        nonzero_rows: also reject all-zero rows (they will be normalised).

    Returns:
        (K,) row peaks, for :func:`normalize_rows`.

    Raises:
        TypeError: not a tensor, inside a ``torch.func`` transform, or a dtype other than z1's.
        ValueError: not 2-D, another D or device than z1, non-finite or all-zero rows.

    Example:
        >>> check_negatives(torch.ones(3, 2), torch.ones(4, 5), nonzero_rows=True)
        Traceback (most recent call last):
        ...
        ValueError: negatives must have D=5 columns like z1 and z2, got shape (3, 2)

    Taught in notebook 08.
    """
    if not isinstance(negatives, torch.Tensor):
        raise TypeError(
            f"negatives must be a torch.Tensor of shape (K, D) or None, got "
            f"{type(negatives).__name__}"
        )
    if _is_transformed(negatives):
        raise TypeError("negatives is wrapped by a torch.func transform, which is not supported")
    if negatives.dim() != 2:
        raise ValueError(f"negatives must be 2-D (K, D), got shape {tuple(negatives.shape)}")
    d = z1.shape[1]
    if negatives.shape[1] != d:
        raise ValueError(
            f"negatives must have D={d} columns like z1 and z2, got shape {tuple(negatives.shape)}"
        )
    if negatives.dtype != z1.dtype:
        raise TypeError(
            f"negatives must have the dtype of z1 and z2, {z1.dtype}, got {negatives.dtype}: "
            f"convert it with .to(...) first"
        )
    if negatives.device != z1.device:
        raise ValueError(
            f"negatives must be on the device of z1 and z2, {z1.device}, got {negatives.device}"
        )
    peaks = negatives.detach().abs().amax(dim=1)  # (K,) NaN propagates
    ok = torch.stack(
        [torch.isfinite(peaks).all(), (peaks > 0).all() | (not nonzero_rows)]
    ).tolist()  # one transfer
    if not ok[0]:
        rows = torch.nonzero(~torch.isfinite(negatives).all(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"negatives has non-finite rows {rows} (NaN or inf)")
    if not ok[1]:
        rows = torch.nonzero(peaks == 0).flatten()[:5].tolist()
        raise ValueError(
            f"negatives has all-zero rows {rows}: a zero embedding cannot be normalised"
        )
    return peaks


def _compute_dtype(z: torch.Tensor) -> torch.dtype:
    # float64 stays float64 (gradcheck, references); everything else runs in float32, which is
    # what keeps logsumexp stable at tau = 0.01 with bfloat16 or float16 inputs.
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def normalize_rows(z: torch.Tensor, peaks: torch.Tensor | None = None) -> torch.Tensor:
    """``z / ||z||`` row by row, for any row that is not all zero, whatever its scale.

    ``F.normalize`` divides by ``max(||z||, 1e-12)``, so rows shorter than 1e-12 come out
    shorter than 1, and in float32 a norm below about 1e-19 underflows and one above about
    1e19 overflows when squared. Dividing each row by its largest entry first (a detached
    constant: the result does not depend on it, so the gradient is exact) keeps the norm
    between 1 and sqrt(D). The caller checks that no row is all zero.

    Args:
        z: (N, D) rows, none of them all zero.
        peaks: (N,) ``z.abs().amax(dim=1)`` if already computed.

    Returns:
        (N, D) unit rows.

    Example:
        >>> normalize_rows(torch.tensor([[3e-30, 4e-30], [3e25, -4e25]])).tolist()
        [[0.6000000238418579, 0.800000011920929], [0.6000000238418579, -0.800000011920929]]

    Taught in notebook 01.
    """
    if peaks is None:
        peaks = z.detach().abs().amax(dim=1)  # (N,) largest entry of each row
    return _UnitRows.apply(z, peaks.to(z.dtype))  # (N, D)


class _UnitRows(torch.autograd.Function):
    """``z / ||z||`` by rows; saves only ``z`` (the caller's tensor) and the (N,) row peaks.

    The backward ``(g - u (g . u)) / ||z||`` is written with differentiable operations on the
    saved input, so it also serves double backward. Compared with ``F.normalize`` this keeps
    no (N, D) intermediate alive between forward and backward.
    """

    @staticmethod
    def _unit(z: torch.Tensor, peaks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = z / peaks[:, None]  # (N, D) entries in [-1, 1]: the norm cannot under/overflow
        norm_y = torch.linalg.vector_norm(y, dim=1, keepdim=True)  # (N, 1) in [1, sqrt(D)]
        return y / norm_y, norm_y  # (N, D), (N, 1)

    @staticmethod
    def forward(ctx, z, peaks):
        ctx.save_for_backward(z, peaks)
        return _UnitRows._unit(z, peaks)[0]

    @staticmethod
    def backward(ctx, g):
        z, peaks = ctx.saved_tensors
        u, norm_y = _UnitRows._unit(z, peaks)  # (N, D), (N, 1) recomputed: O(N D)
        radial = torch.linalg.vecdot(g, u)[:, None]  # (N, 1) g . u
        scale = norm_y * peaks[:, None]  # (N, 1) ||z||
        if torch.is_grad_enabled():  # create_graph=True: keep the formula differentiable
            return (g - u * radial) / scale, None  # (N, D)
        return u.mul_(radial).neg_().add_(g).div_(scale), None  # (N, D) in place: one buffer
