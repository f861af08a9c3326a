"""The symmetric kernel for any rows and any temperature: every tile shifted by its own maxima.

:mod:`dcl_teach.symmetric` runs the loss on the tiles ``S[I, J]``, ``I <= J``, of the symmetric
similarity matrix. When it knows its rows are unit vectors and ``tau`` is not too small, one
shift, the bound ``1/tau``, serves every entry. Otherwise (``normalize=False``, where the caller
vouches for the rows, or ``tau < 1/32``) it uses the functions here: each tile is shifted by its
own row (and column) maxima and its exponents are floored at
:data:`dcl_teach.fused.EXP_FLOOR`, so no float is subnormal whatever the scale of the rows.

Taught in notebook 04.
"""

from __future__ import annotations

import torch

from dcl_teach import tiles as tiles_module
from dcl_teach.fused import _exp_floored_
from dcl_teach.tiles import exclude_, flat, give, take, tile_entries

#: The backward of the symmetric kernel derives ``P^T`` from ``P`` by a rank-one rescaling
#: (one exponential per tile instead of two) when all row log-sum-exps lie within this
#: distance: the scale factors stay within e^+-10, and floored entries stay normal floats.
LSE_SPREAD = 20.0


def _tile_logsumexp(
    s: torch.Tensor, dim: int, scratch: torch.Tensor, keep: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``logsumexp`` of the tile along ``dim``, shifted by the tile's own maxima, without
    subnormals; rows (or columns) that are all ``-inf`` give the float's lowest value. With
    ``keep``, also the shifted exponentials (in ``scratch``) and the maxima."""
    low = torch.finfo(s.dtype).min
    m = s.amax(dim=dim, keepdim=True).clamp_min_(low)  # (b, 1) or (1, c) finite
    e = _exp_floored_(torch.sub(s, m, out=scratch))  # same shape as s, in [e^-64, 1]
    lse = e.sum(dim=dim).log_().add_(m.squeeze(dim))  # (b,) or (c,)
    return (lse, e, m) if keep else lse


def _columns_from_rows(e: torch.Tensor, m: torch.Tensor) -> torch.Tensor | None:
    """Column ``logsumexp`` of a tile from its row-shifted exponentials ``e = exp(s - m)``
    (floored), by one matrix-vector product with the weights ``exp(m - max m)``; ``None``
    when that would not be exact (the caller then makes the column pass).

    Exact when the row maxima lie within :data:`LSE_SPREAD` (weights >= e^-20, so every
    product stays a normal float) and every column sum is at least e^-20 (a column's floored
    entries, at most ``b e^-64``, are then below 1e-15 of its sum). The two tests read values
    on the host, so the caller uses this on the CPU only.
    """
    lo, hi = torch.aminmax(m)
    if float(hi - lo) > LSE_SPREAD:
        return None
    w = (m.squeeze(1) - hi).exp_()  # (b,) in [e^-20, 1]
    sums = torch.mv(e.t(), w)  # (c,) sum_a exp(s[a, c] - max m)
    if float(sums.min()) < _MIN_COLUMN_SUM:
        return None
    return sums.log_().add_(hi)  # (c,)


#: Smallest column sum (relative to the tile's largest row maximum) for which
#: :func:`_columns_from_rows` is exact.
_MIN_COLUMN_SUM = 2.0e-9  # e^-20


def _similarities(
    z: torch.Tensor, r0: int, r1: int, c0: int, c1: int, inv_tau: float, out: torch.Tensor
) -> torch.Tensor:
    """``S[r0:r1, c0:c1] = z[r0:r1] z[c0:c1]^T / tau`` into ``out``; 1/tau rides on the GEMM."""
    return torch.addmm(out, z[r0:r1], z[c0:c1].t(), beta=0, alpha=inv_tau, out=out)


def tiled_forward(
    z: torch.Tensor, inv_tau: float, n: int, b: int, decoupled: bool, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row log-sum-exps ``lse`` (K,) over the tiles I <= J; returns them and, when the tiles
    fit in :data:`dcl_teach.tiles.CACHE_ENTRIES` and a gradient is wanted, the tiles (one flat buffer)."""
    k = 2 * n
    starts = range(0, k, b)
    entries = tile_entries(k, b)
    cached = need_grad and entries <= tiles_module.CACHE_ENTRIES
    arena = take(entries if cached else b * b, z)  # the kept tiles, or one tile reused
    scratch = take(b * b, z)  # (b*b,)
    lse = torch.full((k,), float("-inf"), dtype=z.dtype, device=z.device)  # (K,)
    offset = 0
    for r0 in starts:
        r1 = min(r0 + b, k)
        for c0 in range(r0, k, b):
            c1 = min(c0 + b, k)
            tile = flat(arena, r1 - r0, c1 - c0, offset)
            offset += tile.numel() if cached else 0
            s = _similarities(z, r0, r1, c0, c1, inv_tau, out=tile)  # (bi, bj) S[I, J]
            exclude_(s, r0, c0, n, decoupled)
            work = flat(scratch, r1 - r0, c1 - c0)  # (bi, bj)
            row, e, m = _tile_logsumexp(s, 1, work, keep=True)  # (bi,), (bi, bj), (bi, 1)
            torch.logaddexp(lse[r0:r1], row, out=lse[r0:r1])
            if c0 != r0:  # the same tile, read by columns, serves the rows of J
                # from the row pass's exponentials when exact: no second pass over the tile
                col = _columns_from_rows(e, m) if z.device.type == "cpu" else None
                if col is None:
                    col = _tile_logsumexp(s, 0, work)  # (bj,)
                torch.logaddexp(lse[c0:c1], col, out=lse[c0:c1])
    give(scratch)
    if not cached:
        give(arena)
        arena = None
    return lse, arena


def tiled_backward(
    z: torch.Tensor,
    lse: torch.Tensor,
    arena: torch.Tensor | None,
    inv_tau: float,
    b: int,
    decoupled: bool,
) -> torch.Tensor:
    """``(P + P^T) Z`` (K, D) tile by tile, from the kept tiles or recomputing them."""
    k = z.shape[0]
    buf = take(b * b, z) if arena is None else None  # (b*b,) recomputed tile
    q1 = take(b * b, z)  # (b*b,)
    q2 = take(b * b, z) if arena is not None else buf  # the kept tiles are read only
    grad = torch.zeros_like(z)  # (K, D)
    # When the row log-sum-exps lie within LSE_SPREAD of each other, P[J, I]^T is P[I, J]
    # scaled by exp(lse_I - lse_J), a rank-one factor: one exp pass per tile instead of two.
    # Floored entries (e^-64) then stay >= e^-(64 + LSE_SPREAD), normal floats. The test reads
    # the spread on the host, so only on the CPU, where that costs no device synchronisation.
    up = down = None
    if z.device.type == "cpu" and k > 0:
        lo, hi = torch.aminmax(lse)
        if float(hi - lo) <= LSE_SPREAD:
            mid = (lo + hi) / 2
            up = (lse - mid).exp_()  # (K,) exp(lse - mid) in [e^-10, e^10]
            down = (mid - lse).exp_()  # (K,)
    # Recomputed tiles come out of the GEMM already shifted, s - lse_I, from one extra column:
    # [z / tau, -lse_a] . [z_b, 1] (a pass over the tile less than subtracting afterwards).
    # Only when the forward never keeps the tiles: a second backward, which recomputes them,
    # must give the same bits as the first.
    shifted = up is not None and tile_entries(k, b) > tiles_module.CACHE_ENTRIES
    if shifted:
        zv = torch.cat([z, torch.ones_like(lse)[:, None]], dim=1)  # (K, D + 1)
    offset = 0
    for r0 in range(0, k, b):
        r1 = min(r0 + b, k)
        if shifted:  # (bi, D + 1) the rows of this block only, to keep memory down
            zu = torch.cat([z[r0:r1] * inv_tau, -lse[r0:r1, None]], dim=1)
        for c0 in range(r0, k, b):
            c1 = min(c0 + b, k)
            if shifted:
                q = torch.mm(zu, zv[c0:c1].t(), out=flat(q1, r1 - r0, c1 - c0))
                exclude_(q, r0, c0, k // 2, decoupled)  # (bi, bj) s - lse_I
            elif arena is not None:  # kept by the forward pass, read only
                s = flat(arena, r1 - r0, c1 - c0, offset)  # (bi, bj)
                offset += s.numel()
            else:
                s = _similarities(z, r0, r1, c0, c1, inv_tau, out=flat(buf, r1 - r0, c1 - c0))
                exclude_(s, r0, c0, k // 2, decoupled)
            # Q[I, J] = P[I, J] + P[J, I]^T = exp(s - lse_I) + exp(s - lse_J^T)
            if not shifted:
                q = torch.sub(s, lse[r0:r1, None], out=flat(q1, r1 - r0, c1 - c0))
            if up is not None:  # P[J, I]^T = P[I, J] exp(lse_I) exp(-lse_J), without an exp
                q = _exp_floored_(q)  # (bi, bj) P[I, J]
                p_t = torch.mul(q, up[r0:r1, None], out=flat(q2, r1 - r0, c1 - c0))
                q.addcmul_(p_t, down[None, c0:c1])  # (bi, bj)
            else:
                p_t = torch.sub(s, lse[None, c0:c1], out=flat(q2, r1 - r0, c1 - c0))
                q = _exp_floored_(q).add_(_exp_floored_(p_t))  # (bi, bj)
            grad[r0:r1].addmm_(q, z[c0:c1])  # (bi, D)
            if c0 != r0:
                grad[c0:c1].addmm_(q.t(), z[r0:r1])  # (bj, D)
    give(q1, q2, *([] if arena is None else [arena]))  # q2 is buf when recomputing
    return grad


def one_tile_forward(
    z: torch.Tensor, inv_tau: float, n: int, decoupled: bool, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The whole ``S`` as one tile (small K): ``lse`` (K,), and for the backward the shifted
    exponentials ``E = exp(S - rowmax)`` (>= e^-64, normal floats) and their row sums."""
    k = 2 * n
    arena = take(k * k, z)  # (K*K,)
    s = _similarities(z, 0, k, 0, k, inv_tau, out=flat(arena, k, k))  # (K, K)
    exclude_(s, 0, 0, n, decoupled)
    m = s.amax(dim=1, keepdim=True)  # (K, 1) finite: every row has a candidate
    e = _exp_floored_(s.sub_(m))  # (K, K) in [e^-64, 1]; the row maximum gives 1
    sums = e.sum(dim=1)  # (K,) >= 1
    lse = sums.log().add_(m.squeeze(1))  # (K,)
    if not need_grad:
        give(arena)
        return lse, None, None
    return lse, arena, sums


def one_tile_backward(z: torch.Tensor, arena: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """``(P + P^T) Z`` (K, D) from the kept ``E``: with ``P = D^-1 E`` (``D`` the row sums),
    ``D^-1 (E Z) + E^T (D^-1 Z)``, two GEMMs (a transposed operand is free in BLAS, a
    transposed add over the tile is not), no pass over the tile."""
    k = z.shape[0]
    e = flat(arena, k, k)  # (K, K)
    inv = sums.reciprocal()[:, None]  # (K, 1)
    grad = torch.mm(e, z).mul_(inv)  # (K, D) D^-1 E Z
    grad.addmm_(e.t(), z * inv)  # (K, D) + E^T D^-1 Z
    give(arena)
    return grad
