"""The single-process kernel: the candidates are the anchors, so ``S`` is symmetric.

In one process the 2N anchors ``z = [z1; z2]`` are also all the candidates, so
``S = z z^T / tau`` is symmetric and only its square tiles ``S[I, J]`` with ``I <= J`` need
computing (:func:`dcl_teach.tiles.tiles`); each serves the rows of ``I`` and, transposed, the
rows of ``J``:

* forward: the log-sum-exp ``lse_a`` of every row, accumulated tile by tile;
* backward: with ``P[a, b] = exp(s[a, b] - lse_a)``, the gradient is
  ``(g / tau) ((P + P^T) Z - (w_a + w_{pos(a)}) z_{pos(a)})``, and ``Q = P + P^T`` is
  symmetric, so each tile of ``Q`` gives ``Q[I, J] Z[J]`` to rows ``I`` and ``Q[I, J]^T Z[I]``
  to rows ``J``.

That is about 2 K^2 D multiply-adds in all, against 3 K^2 D for ``S``, ``C Z`` and ``C^T Z``
(the "matmul floor" of the benchmark).

**Unit rows.** The losses let the kernel normalise the rows itself (``peaks=``): it knows then
that every ``|s| <= 1/tau``, so one shift, the bound ``1/tau``, serves every entry, and the
shifted exponentials ``E = exp(S - 1/tau)`` are the same for rows and columns. For
``tau >= 1/32`` they lie in ``[e^-64, 1]``, normal floats (subnormals are 50-100x slower on
CPUs), and ``Q = E * (1/D_I + 1/D_J)`` with ``D`` the row sums of ``E``: no maxima, no second
exponential. The gradient of the normalisation, ``(g - u (g . u)) / ||z||``, is applied in
the same backward. Other rows or smaller ``tau`` take the general path of
:mod:`dcl_teach.symmetric_rowmax`, where every tile is shifted by its own maxima.

Second derivatives (``create_graph=True``) go through autograd on
:func:`dcl_teach.fused.dense_rows`: exact, at the memory cost of the full matrix.

Taught in notebook 04.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dcl_teach import tiles as tiles_module
from dcl_teach.fused import EXP_FLOOR, dense_rows
from dcl_teach.inputs import normalize_rows
from dcl_teach.symmetric_rowmax import (
    one_tile_backward,
    one_tile_forward,
    tiled_backward,
    tiled_forward,
)
from dcl_teach.tiles import exclude_, flat, give, take, tile_entries, tiles

#: Largest side of the square tiles: 2048 x 2048 holds 16 MiB of float32. Smaller tiles stay
#: in cache but multiply the number of operations, and each operation costs a synchronisation
#: of the intra-op threads: with 512 x 512 tiles the kernel ran 3-4x slower on 2 threads of a
#: busy machine, 10 % faster on an idle one.
SYMMETRIC_TILE = 2048

#: Up to this K the whole matrix is one tile.
ONE_TILE_MAX = 1024

#: Side of the tiles from ``ONE_TILE_MAX`` up to ``4 * ONE_TILE_MAX``: at N = 1024 and 2048
#: (K = 2048, 4096) tiles of 512 ran 5-10 % faster than two row blocks or tiles of 2048, and
#: the forward's tiles still fit in the cache up to K = 2048.
MID_TILE = 512

#: The shared shift ``1/tau`` of unit rows needs ``2/tau <= -EXP_FLOOR``: below this ``tau``
#: the general path (its own maxima per tile) runs instead.
UNIT_SHIFT_MIN_TAU = 2.0 / -EXP_FLOOR


def tile_side(k: int) -> int:
    """Side of the square tiles for K = 2N rows: the whole matrix up to :data:`ONE_TILE_MAX`,
    then :data:`MID_TILE` up to ``4 * ONE_TILE_MAX``, then :data:`SYMMETRIC_TILE`.

    Example:
        >>> tile_side(512), tile_side(2048), tile_side(8192)
        (512, 512, 2048)
    """
    if k <= ONE_TILE_MAX:
        return max(k, 1)
    if k <= 4 * ONE_TILE_MAX:
        return MID_TILE
    return SYMMETRIC_TILE


def _unit_operands(
    z: torch.Tensor, peaks: torch.Tensor, inv_tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unit rows ``u = z / ||z||`` (K, D), as :func:`normalize_rows` computes them, their
    ``1 / ||z||`` (K, 1), and the GEMM operands ``[u / tau, -1/tau]`` and ``[u, 1]`` (K, D + 1),
    whose product is ``S - 1/tau``: the shift rides on the GEMM instead of a pass over the
    tile. ``u`` is a view into the second operand."""
    k, d = z.shape
    y = z / peaks[:, None]  # (K, D) entries in [-1, 1]: the norm cannot under/overflow
    norm_y = torch.linalg.vector_norm(y, dim=1, keepdim=True)  # (K, 1) in [1, sqrt(D)]
    inv_norm = (norm_y * peaks[:, None]).reciprocal_()  # (K, 1) 1 / ||z||
    zv = z.new_empty(k, d + 1)  # (K, D + 1) [u, 1]
    u = torch.div(y, norm_y, out=zv[:, :d])  # (K, D)
    zv[:, d] = 1.0
    zu = zv * inv_tau  # (K, D + 1)
    zu[:, d] = -inv_tau
    return u, inv_norm, zu, zv


def _unit_tile(zu, zv, r0, r1, c0, c1, n, decoupled, out):
    """``E[I, J] = exp(S[I, J] - 1/tau)`` into ``out``: in ``[e^-2/tau, 1]``, 0 where excluded."""
    e = torch.mm(zu[r0:r1], zv[c0:c1].t(), out=out)  # (bi, bj) s - 1/tau in [-2/tau, 0]
    return exclude_(e, r0, c0, n, decoupled).exp_()  # (bi, bj)


def _unit_forward(
    zu: torch.Tensor,
    zv: torch.Tensor,
    inv_tau: float,
    n: int,
    b: int,
    decoupled: bool,
    need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Unit rows, from the operands of :func:`_unit_operands`: ``lse`` (K,), the kept tiles of
    ``E`` (one flat buffer, or ``None`` when they exceed :data:`dcl_teach.tiles.CACHE_ENTRIES`
    or no gradient is wanted) and the row sums ``D`` (K,) of ``E``, also its column sums."""
    k = 2 * n
    entries = tile_entries(k, b)
    cached = need_grad and entries <= tiles_module.CACHE_ENTRIES
    arena = take(entries if cached else b * b, zu)  # the kept tiles, or one tile reused
    if k <= b:  # one tile
        sums = _unit_tile(zu, zv, 0, k, 0, k, n, decoupled, flat(arena, k, k)).sum(dim=1)  # (K,)
    else:
        sums = zu.new_zeros(k)  # (K,)
    offset = 0
    for r0, r1, c0, c1 in tiles(k, b) if k > b else ():
        e = _unit_tile(zu, zv, r0, r1, c0, c1, n, decoupled, flat(arena, r1 - r0, c1 - c0, offset))
        offset += e.numel() if cached else 0
        sums[r0:r1] += e.sum(dim=1)  # (bi,)
        if c0 != r0:  # the same tile, read by columns, serves the rows of J
            sums[c0:c1] += e.sum(dim=0)  # (bj,)
    if not cached:
        give(arena)
        arena = None
    return sums.log().add_(inv_tau), arena, sums  # lse = log D + 1/tau


def _unit_backward(
    u: torch.Tensor,
    zu: torch.Tensor,
    zv: torch.Tensor,
    sums: torch.Tensor,
    arena: torch.Tensor | None,
    b: int,
    decoupled: bool,
) -> torch.Tensor:
    """``(P + P^T) U`` (K, D) with ``P = D^-1 E``: each tile of ``Q = E (1/D_I + 1/D_J)`` in
    two passes, from the kept tiles or recomputing them."""
    k = u.shape[0]
    inv_d = sums.reciprocal()  # (K,) 1 / D
    buf = take(b * b, u) if arena is None else None  # (b*b,) a recomputed tile
    q_buf = take(b * b, u)  # (b*b,)
    grad = torch.zeros_like(u) if k > b else None  # (K, D)
    offset = 0
    for r0, r1, c0, c1 in tiles(k, b):
        if arena is None:
            e = _unit_tile(zu, zv, r0, r1, c0, c1, k // 2, decoupled, flat(buf, r1 - r0, c1 - c0))
        else:  # kept by the forward pass, read only
            e = flat(arena, r1 - r0, c1 - c0, offset)  # (bi, bj)
            offset += e.numel()
        q = torch.mul(e, inv_d[r0:r1, None], out=flat(q_buf, r1 - r0, c1 - c0))  # P[I, J]
        q.addcmul_(e, inv_d[None, c0:c1])  # + P[J, I]^T: E is symmetric
        if grad is None:  # one tile
            grad = torch.mm(q, u)  # (K, D)
            break
        grad[r0:r1].addmm_(q, u[c0:c1])  # (bi, D)
        if c0 != r0:
            grad[c0:c1].addmm_(q.t(), u[r0:r1])  # (bj, D)
    give(q_buf, buf, arena)
    return grad


def _dense_grad(z, peaks, weights, grad_out, tau, decoupled, scale):
    """The differentiable gradient (``create_graph=True``), by autograd through the full
    matrix of :func:`dense_rows`, with the normalisation when the kernel made it."""
    with torch.enable_grad():
        x = z.view_as(z) if z.requires_grad else z.detach().requires_grad_()  # (K, D)
        u = x if peaks is None else normalize_rows(x, peaks)  # (K, D)
        rows = torch.arange(x.shape[0], device=x.device)  # (K,)
        loss = dense_rows(u, u, rows, weights, tau=tau, decoupled=decoupled).sum() * scale
        (grad,) = torch.autograd.grad(loss, x, grad_out, create_graph=True)
    return grad


class SymmetricContrastiveFunction(torch.autograd.Function):
    """The single-process kernel (see the module docstring).

    ``apply(z, weights, tau, decoupled, block_size, scale[, peaks])`` with ``z`` (K, D) the
    stacked views ``[z1; z2]`` (anchor ``a``'s positive at ``(a + K/2) mod K``), ``weights``
    (K,) and ``scale`` as in :class:`dcl_teach.fused.ContrastiveFunction`, ``block_size`` the
    side of the square tiles. ``weights`` may instead be a function from the (N,) detached
    cosines ``<u_a, u_pos(a)>`` of the pairs, as the kernel normalised them, to the (N,) pair
    weights (DCLW's, without normalising the rows a second time outside). Without ``peaks`` the rows are used as given; with ``peaks`` (K,),
    the row maxima ``max_j |z[a, j]|``, they are normalised inside (robustly at any scale, as
    :func:`dcl_teach.inputs.normalize_rows` does) and the gradient includes the normalisation.
    Returns the scalar ``g * sum_a L_a``.

    The forward keeps the exponentials of its tiles for the backward when they fit in
    :data:`dcl_teach.tiles.CACHE_ENTRIES`; a second backward (``retain_graph=True``) recomputes
    them, the same way, bit for bit.

    Taught in notebook 04.
    """

    @staticmethod
    def forward(ctx, z, weights, tau, decoupled, block_size, scale, peaks=None):
        k = z.shape[0]
        n = k // 2
        b = min(block_size, k)
        inv_tau = 1.0 / tau
        need_grad = ctx.needs_input_grad[0]
        u, inv_norm, zu, zv = (z, None, None, None)
        if peaks is not None:  # (K, D), (K, 1), (K, D + 1), (K, D + 1)
            u, inv_norm, zu, zv = _unit_operands(z, peaks, inv_tau)
        unit = inv_norm is not None and tau >= UNIT_SHIFT_MIN_TAU
        sums = None
        if unit:
            lse, arena, sums = _unit_forward(zu, zv, inv_tau, n, b, decoupled, need_grad)
        elif k <= b:  # one tile: the whole matrix, whose row maxima are the global ones
            lse, arena, sums = one_tile_forward(u, inv_tau, n, decoupled, need_grad)
        else:
            lse, arena = tiled_forward(u, inv_tau, n, b, decoupled, need_grad)
        # the positive terms: s[a, a + n] = s[a + n, a], weighted by both anchors of the pair
        c = torch.linalg.vecdot(u[:n], u[n:])  # (n,) <u_a, u_pos(a)>, cosines for unit rows
        if callable(weights):  # from the rows as the kernel uses them; constants
            w = weights(c.detach().clone())  # (n,)
            weights = torch.cat([w, w])  # (K,) both anchors of a pair share its weight
        w_pair = weights[:n] + weights[n:]  # (n,)
        s_pos = c.mul_(inv_tau)  # (n,)
        loss = (lse.sum() - torch.dot(w_pair, s_pos)) * scale
        if need_grad:
            ctx.save_for_backward(z, peaks)
            ctx.rows, ctx.inv_norm, ctx.operands = u, inv_norm, (zu, zv)
            ctx.arena, ctx.sums, ctx.lse, ctx.w_pair = arena, sums, lse, w_pair
            ctx.weights = weights
            ctx.hyper = (tau, decoupled, b, scale, unit)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        z, peaks = ctx.saved_tensors
        tau, decoupled, b, scale, unit = ctx.hyper
        if torch.is_grad_enabled():  # create_graph=True: differentiable, by the dense form
            grad = _dense_grad(z, peaks, ctx.weights, grad_out, tau, decoupled, scale)
            return grad, None, None, None, None, None, None
        u, inv_norm, sums = ctx.rows, ctx.inv_norm, ctx.sums  # (K, D), (K, 1), (K,)
        arena, ctx.arena = ctx.arena, None  # a second backward recomputes the tiles
        k, inv_tau = u.shape[0], 1.0 / tau
        if unit:
            grad = _unit_backward(u, *ctx.operands, sums, arena, b, decoupled)  # (K, D)
        elif k <= b:  # one tile; a second backward recomputes it the same way, bit for bit
            if arena is None:
                _, arena, sums = one_tile_forward(u, inv_tau, k // 2, decoupled, True)
            grad = one_tile_backward(u, arena, sums)  # (K, D)
        else:
            grad = tiled_backward(u, ctx.lse, arena, inv_tau, b, decoupled)  # (K, D)
        # the positive term: -(w_a + w_{pos(a)}) z_{pos(a)}, both anchors of the pair pulling;
        # pos(a) = a + n on the first half, a - n on the second (positive_of with K = 2n)
        n = k // 2
        w_pair = ctx.w_pair[:, None]  # (n, 1)
        grad[:n].addcmul_(u[n:], w_pair, value=-1.0)  # (n, D)
        grad[n:].addcmul_(u[:n], w_pair, value=-1.0)  # (n, D)
        factor = grad_out * (scale / tau)  # a 0-dim tensor: no host-device sync
        if inv_norm is not None:  # through u = z / ||z||: (g - u (g . u)) / ||z||
            radial = torch.linalg.vecdot(grad, u)[:, None]  # (K, 1) g . u
            grad.addcmul_(u, radial, value=-1.0)  # (K, D)
            factor = inv_norm * factor  # (K, 1)
        grad *= factor
        return grad, None, None, None, None, None, None


def fused_symmetric(
    z: torch.Tensor,
    weights: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    *,
    tau: float,
    decoupled: bool,
    block_size: int | None = None,
    scale: float = 1.0,
    peaks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scalar ``scale * sum_a L_a`` when the anchors are the candidates (one process).

    Args:
        z: (K, D) the stacked views ``[z1; z2]``; K even. Used as given without ``peaks``.
        weights: (K,) weight ``w_a`` of each positive term; or a function from the (N,)
            detached cosines of the pairs (of the rows as the kernel uses them) to the (N,)
            pair weights, each applied to both anchors of its pair.
        tau: temperature.
        decoupled: drop the positive from the denominator (DCL, DCLW).
        block_size: side of the square tiles; default :func:`tile_side`.
        scale: reduction factor, ``1 / K`` for the mean.
        peaks: (K,) the row maxima ``z.abs().amax(dim=1)``, all > 0, to normalise the rows
            inside the kernel (its fast path); ``None``: ``z`` is used as given.

    Returns:
        0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> z = torch.randn(8, 4, dtype=torch.float64)
        >>> w = torch.ones(8, dtype=torch.float64)
        >>> peaks = z.abs().amax(dim=1)
        >>> a = fused_symmetric(z, w, tau=0.5, decoupled=True, block_size=3, peaks=peaks)
        >>> u = F.normalize(z, dim=1)
        >>> b = dense_rows(u, u, torch.arange(8), w, tau=0.5, decoupled=True).sum()
        >>> bool(torch.isclose(a, b))
        True

    Taught in notebook 04.
    """
    block = tile_side(z.shape[0]) if block_size is None else int(block_size)
    extra = () if peaks is None else (peaks.detach().to(z.dtype),)
    if not callable(weights):
        weights = weights.to(z.dtype)
    return SymmetricContrastiveFunction.apply(
        z, weights, tau, decoupled, block, float(scale), *extra
    )
