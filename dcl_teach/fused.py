"""The kernels behind InfoNCE, DCL and DCLW: tiles, analytic gradient, no 2N x 2N matrix.

Every loss of the course has the same shape. For anchor ``a`` with similarities
``s[a, j] = <z_a, z_j> / tau`` to the candidates ``j``, a positive ``pos(a)`` and a weight ``w_a``
on the positive term,

    L_a = -w_a * s[a, pos(a)] + logsumexp_{j in D(a)} s[a, j]

where the denominator set ``D(a)`` is every candidate but the anchor itself (InfoNCE) or every
candidate but the anchor and its positive (DCL, DCLW). InfoNCE and DCL have ``w_a = 1``.

Its gradient has a closed form. With ``P[a, j]`` the softmax of row ``a`` over ``D(a)`` and
``C[a, j] = P[a, j] - w_a [j = pos(a)]``, the loss ``L = g * sum_a L_a`` (``g = 1 / M`` for the
mean) has

    dL/dz_a = (g / tau) sum_j C[a, j] z_j        dL/dz_j = (g / tau) sum_a C[a, j] z_a

so a forward and backward pass need only three matrix products: ``S = Z_a Z^T`` and the two
products with ``C``. Two kernels use this:

* :class:`dcl_teach.symmetric.SymmetricContrastiveFunction`
  (:func:`dcl_teach.symmetric.fused_symmetric`), one process: the candidates are the anchors,
  ``S`` is symmetric, and only its square tiles ``I <= J`` are computed. About two
  GEMM-equivalents instead of three. The losses run it whenever they can.
* :class:`ContrastiveFunction` (:func:`fused_rows`, here), the gathered layout of
  ``torch.distributed`` (M local anchors, K gathered candidates, not square): it walks the
  anchors in row blocks and computes ``C`` of the block and its two products at once, while
  the block is still in cache. It also serves extra negatives (a memory queue, notebook 08):
  ``X`` more columns that join every anchor's denominator ``D(a)``, hold no positive and are
  constants, so no gradient is computed for them.

Neither ever holds the full matrix, its softmax or its masks: peak extra memory is a tile or
two plus a few ``(K, D)`` arrays. Every block is shifted by its own row maxima (or, on unit
rows, by the bound ``1/tau``) and its exponents stay above :data:`EXP_FLOOR`, so no float is
subnormal and the speed does not depend on ``tau``. Second derivatives (``create_graph=True``) are exact: they go through
autograd on :func:`dense_rows`, the plain full-matrix version, which is also the reference and
the "naive" baseline of the benchmark.
"""

from __future__ import annotations

import torch

from dcl_teach.masks import positive_of

#: Default tile: this many float32 entries (16 MiB) per block of rows.
DEFAULT_TILE_ENTRIES = 1 << 22


#: Exponents are floored here before ``exp``: with every row shifted by its maximum, an entry
#: below ``e^-64`` weighs less than 1e-27 of the row and is counted as ``e^-64``. This keeps
#: every exponential (and every product with it in the next GEMM) a normal float: subnormal
#: floats, which ``exp`` returns below about ``e^-87`` in float32, are 50-100x slower on CPUs.
EXP_FLOOR = -64.0


def _exp_floored_(x: torch.Tensor) -> torch.Tensor:
    """``exp(max(x, EXP_FLOOR))`` in place; masked ``-inf`` entries become ``e^-64``, not 0."""
    return x.clamp_min_(EXP_FLOOR).exp_()


def default_block_size(num_candidates: int) -> int:
    """Rows per block so that one ``(block, K)`` float32 tile is about 16 MiB.

    Example:
        >>> default_block_size(8192)
        512

    Taught in notebook 04.
    """
    return max(16, DEFAULT_TILE_ENTRIES // max(num_candidates, 1))


class ContrastiveFunction(torch.autograd.Function):
    """Blockwise contrastive loss with its analytic gradient (see the module docstring).

    ``apply(za, zc, rows, weights, tau, decoupled, block_size, scale[, negatives])`` with ``za``
    (M, D) the anchors, ``zc`` (K, D) all candidates (the stacked two views, possibly gathered
    from every rank), ``rows`` (M,) the index of each anchor inside ``zc`` (its positive sits at
    ``(rows + K/2) mod K``), ``weights`` (M,) the weight ``w_a`` of each positive term,
    ``scale`` the reduction factor ``g``, and ``negatives`` (X, D) or ``None`` extra candidates
    that every anchor sees as negatives (columns ``K .. K + X - 1`` of the tile). Returns the
    scalar ``g * sum_a L_a``. The extra negatives are constants: ``backward`` returns no
    gradient for them (pass them detached; :func:`fused_rows` does).

    The gradient is computed during the forward pass, block by block, whenever autograd will
    need it; ``backward`` only multiplies it by the incoming scalar. When a differentiable
    gradient is asked for (``create_graph=True``, a gradient penalty), ``backward`` computes it
    by autograd through :func:`dense_rows` instead (see :func:`dense_grads`): second derivatives
    are exact, at the memory cost of the full matrix.

    Taught in notebook 04.
    """

    @staticmethod
    def forward(ctx, za, zc, rows, weights, tau, decoupled, block_size, scale, negatives=None):
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        m, k = za.shape[0], zc.shape[0]
        inv_tau = 1.0 / tau
        za_s = za * inv_tau  # (M, D) 1/tau folded into the anchors: S comes out of one GEMM
        # extra negatives are more columns after the K batch candidates; no positive among them
        z_all = zc if negatives is None else torch.cat([zc, negatives])  # (K + X, D)
        zc_t = z_all.t()  # (D, K + X)
        # A ones column makes the row sums of exp(S) fall out of the gradient GEMM for free.
        zc_ext = torch.cat([z_all, zc.new_ones(z_all.shape[0], 1)], dim=1)  # (K + X, D + 1)
        positives = positive_of(rows, k)  # (M,) among the K batch candidates only
        shifts = torch.empty(m, dtype=za.dtype, device=za.device)  # (M,) shift of each row
        log_denom = torch.empty(m, dtype=za.dtype, device=za.device)  # (M,)
        e_pos = torch.empty(m, dtype=za.dtype, device=za.device)  # (M,) s[a, pos(a)] - shift
        grad_za = torch.empty_like(za) if need_grad else None  # (M, D)
        grad_zc = torch.zeros_like(zc) if need_grad else None  # (K, D)
        tile = za.new_empty(min(block_size, m), z_all.shape[0])  # (block, K + X) reused
        for r0 in range(0, m, block_size):
            r1 = min(r0 + block_size, m)
            ar = torch.arange(r1 - r0, device=za.device)  # (b,)
            self_b, pos_b = rows[r0:r1], positives[r0:r1]  # (b,)
            e = torch.mm(za_s[r0:r1], zc_t, out=tile[: r1 - r0])  # (b, K + X) similarities s
            s_pos_b = e[ar, pos_b]  # (b,)
            e[ar, self_b] = float("-inf")
            if decoupled:
                e[ar, pos_b] = float("-inf")
            # Shift by the row's own maximum, one pass over a tile still in cache: a shift that
            # does not depend on the data (such as the bound 1/tau) leaves most exponentials
            # subnormal at small tau, and CPUs compute with subnormals 50-100x more slowly.
            shift = e.amax(dim=1)  # (b,)
            e_pos[r0:r1] = s_pos_b - shift
            e.sub_(shift[:, None])
            _exp_floored_(e)  # (b, K + X) exp(s - shift) in [e^-64, 1]
            out = torch.mm(e, zc_ext)  # (b, D + 1) [sum_j e[a, j] z_j, sum_j e[a, j]]
            denom = out[:, -1]  # (b,)
            shifts[r0:r1] = shift
            log_denom[r0:r1] = denom.log()
            if need_grad:
                # C[a, j] = P[a, j] - w_a [j = pos(a)] with P = e / denom; the row scaling is
                # applied to the (b, D) products rather than to the (b, K) tile.
                coef = (scale * inv_tau) / denom  # (b,)
                grad_za[r0:r1] = out[:, :-1] * coef[:, None]  # (b, D)
                # only the K batch columns: the extra negatives are constants
                e_batch = e if negatives is None else e[:, :k]  # (b, K)
                grad_zc.addmm_(e_batch.t(), za[r0:r1] * coef[:, None])  # (K, D)
        # L_a = shift + log(denom) - w_a (e_pos + shift): written so that the large shift
        # cancels exactly when w_a = 1 instead of through rounding
        loss = (log_denom - weights * e_pos + (1 - weights) * shifts).sum() * scale
        if need_grad:
            # the "- w_a [j = pos(a)]" part of C, one entry per anchor
            wp = weights * (scale * inv_tau)  # (M,)
            grad_za -= wp[:, None] * zc[positives]  # (M, D)
            grad_zc.index_add_(0, positives, -wp[:, None] * za)  # (K, D)
            ctx.save_for_backward(za, zc, rows, weights, grad_za, grad_zc, negatives)
            ctx.hyper = (tau, decoupled, scale)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        za, zc, rows, weights, grad_za, grad_zc, negatives = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable
            grad_za, grad_zc = dense_grads(
                za, zc, rows, weights, grad_out, *ctx.hyper, negatives=negatives
            )
        else:  # the gradient computed in forward; no test of grad_out, which would sync a GPU
            grad_za, grad_zc = grad_za * grad_out, grad_zc * grad_out
        # none for the extra negatives (constants); autograd accepts the trailing None when
        # they were not passed
        return grad_za, grad_zc, None, None, None, None, None, None, None


def dense_grads(
    za: torch.Tensor,
    zc: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    grad_out: torch.Tensor,
    tau: float,
    decoupled: bool,
    scale: float,
    negatives: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``scale * sum_a L_a`` for ``za`` and ``zc`` as separate roles, with a graph.

    The double-backward path of the kernels: when autograd asks for a differentiable gradient
    (``create_graph=True``, e.g. a gradient penalty), it is computed by autograd through
    :func:`dense_rows`, which costs the full ``(M, K)`` matrix but is exact to any order. ``za``
    and ``zc`` may be the same tensor: each gets its own view, so that each role's share is
    returned once. The extra ``negatives`` (X, D), if any, are constants.
    """
    with torch.enable_grad():
        a, c = (z.view_as(z) if z.requires_grad else z.detach().requires_grad_() for z in (za, zc))
        loss = dense_rows(a, c, rows, weights, tau=tau, decoupled=decoupled, negatives=negatives)
        loss = loss.sum() * scale
        grad_a, grad_c = torch.autograd.grad(loss, (a, c), grad_out, create_graph=True)
    return grad_a, grad_c


def fused_rows(
    za: torch.Tensor,
    zc: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    *,
    tau: float,
    decoupled: bool,
    block_size: int | None = None,
    scale: float = 1.0,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar ``scale * sum_a L_a`` by the blockwise kernel (see the module docstring).

    Args:
        za: (M, D) anchor embeddings, already normalised.
        zc: (K, D) candidate embeddings, the stacked views ``[z1; z2]`` of the (global) batch.
        rows: (M,) int64 position of each anchor inside ``zc``.
        weights: (M,) weight ``w_a`` of each positive term (ones for InfoNCE and DCL).
        tau: temperature.
        decoupled: drop the positive from the denominator (DCL, DCLW).
        block_size: anchors per block; default from :func:`default_block_size`.
        scale: reduction factor, ``1 / M`` for the mean.
        negatives: (X, D) extra negatives of every anchor (a memory queue), already
            normalised, same dtype and device as ``za``; detached here: constants, no gradient.
            ``None`` (the default) runs the kernel exactly as without them.

    Returns:
        0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> z = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1)
        >>> rows, w = torch.arange(8), torch.ones(8, dtype=torch.float64)
        >>> a = fused_rows(z, z, rows, w, tau=0.5, decoupled=True, block_size=3)
        >>> b = dense_rows(z, z, rows, w, tau=0.5, decoupled=True).sum()
        >>> bool(torch.isclose(a, b))
        True

    Taught in notebook 04.
    """
    extra = () if negatives is None else (negatives.detach(),)
    if block_size is None:
        block_size = default_block_size(zc.shape[0] + sum(x.shape[0] for x in extra))
    return ContrastiveFunction.apply(
        za, zc, rows, weights.to(za.dtype), tau, decoupled, int(block_size), float(scale), *extra
    )


def dense_rows(
    za: torch.Tensor,
    zc: torch.Tensor,
    rows: torch.Tensor,
    weights: torch.Tensor,
    *,
    tau: float,
    decoupled: bool,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-anchor losses ``L_a`` from the full ``(M, K)`` similarity matrix, with autograd.

    The straightforward form most libraries use: all similarities, masks, one ``logsumexp``.
    Memory grows as M x K; the fused kernel gives the same numbers without that.

    Args:
        za, zc, rows, weights, tau, decoupled: as in :func:`fused_rows`.
        negatives: (X, D) extra negatives of every anchor, as in :func:`fused_rows`: more
            columns of the matrix, never masked, detached (no gradient).

    Returns:
        (M,) tensor of per-anchor losses.

    Example:
        >>> z = torch.ones(4, 2, dtype=torch.float64)  # N = 2 identical pairs, 3 extra copies
        >>> w = torch.ones(4, dtype=torch.float64)
        >>> dense_rows(z, z, torch.arange(4), w, tau=0.5, decoupled=False, negatives=z[:3])
        tensor([1.7918, 1.7918, 1.7918, 1.7918], dtype=torch.float64)

    Taught in notebook 01.
    """
    m, k = za.shape[0], zc.shape[0]
    ar = torch.arange(m, device=za.device)  # (M,)
    positives = positive_of(rows, k)  # (M,) among the K batch candidates only
    if negatives is not None:
        zc = torch.cat([zc, negatives.detach()])  # (K + X, D) the extra columns last
    s = za @ zc.t() / tau  # (M, K + X)
    s_pos = s[ar, positives]  # (M,)
    excluded = torch.zeros(m, zc.shape[0], dtype=torch.bool, device=za.device)  # (M, K + X)
    excluded[ar, rows] = True
    if decoupled:
        excluded[ar, positives] = True
    lse = s.masked_fill(excluded, float("-inf")).logsumexp(dim=1)  # (M,)
    return lse - weights.to(s.dtype) * s_pos
