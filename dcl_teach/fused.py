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

* :class:`SymmetricContrastiveFunction` (:func:`fused_symmetric`), one process: the
  candidates are the anchors, ``S`` is symmetric, and only its square tiles ``I <= J`` are
  computed. The forward accumulates each row's log-sum-exp; the backward applies the symmetric
  ``Q = P + P^T`` tile by tile. About two GEMM-equivalents instead of three.
* :class:`ContrastiveFunction` (:func:`fused_rows`), the gathered layout of
  ``torch.distributed`` (M local anchors, K gathered candidates, not square): it walks the
  anchors in row blocks and computes ``C`` of the block and its two products at once, while
  the block is still in cache. It also serves extra negatives (a memory queue, notebook 08):
  ``X`` more columns that join every anchor's denominator ``D(a)``, hold no positive and are
  constants, so no gradient is computed for them.

Neither ever holds the full matrix, its softmax or its masks: peak extra memory is a tile or
two plus a few ``(K, D)`` arrays. Every tile is shifted by its own row (or column) maxima and
its exponents are floored at :data:`EXP_FLOOR`, so no float is subnormal and the speed does
not depend on ``tau``. Second derivatives (``create_graph=True``) are exact: they go through
autograd on :func:`dense_rows`, the plain full-matrix version, which is also the reference and
the "naive" baseline of the benchmark.
"""

from __future__ import annotations

import threading

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


#: Side of the square tiles of the symmetric kernel: 2048 x 2048 holds DEFAULT_TILE_ENTRIES
#: (16 MiB of float32). Smaller tiles stay in cache but multiply the number of operations, and
#: each operation costs a synchronisation of the intra-op threads: with 512 x 512 tiles the
#: kernel ran 3-4x slower on 2 threads of a busy machine, 10 % faster on an idle one.
SYMMETRIC_TILE = 2048

#: With several tiles (smaller blocks than the default, or K > SYMMETRIC_TILE), the symmetric
#: kernel keeps the tiles of its forward pass for the backward pass (instead of recomputing
#: them) when they hold at most this many entries, 32 MiB of float32.
CACHE_ENTRIES = 1 << 23

#: The backward of the symmetric kernel derives ``P^T`` from ``P`` by a rank-one rescaling
#: (one exponential per tile instead of two) when all row log-sum-exps lie within this
#: distance: the scale factors stay within e^+-10, and floored entries stay normal floats.
LSE_SPREAD = 20.0


def _exclude_(s: torch.Tensor, r0: int, c0: int, n: int, decoupled: bool) -> torch.Tensor:
    """Fill the tile ``s = S[r0:, c0:]`` with ``-inf`` where ``S[a, a]`` (and ``S[a, pos(a)]``).

    The excluded entries lie on diagonals of the tile, so they are set through diagonal views:
    no index tensors and no host-device synchronisation. ``pos(a) = a + n`` for ``a < n``, else
    ``a - n`` (:func:`dcl_teach.masks.positive_of` with ``K = 2n``).
    """
    r1, c1 = r0 + s.shape[0], c0 + s.shape[1]
    # anchors a in [lo, hi) have their excluded entry in column a + shift
    spans = [(0, 0, 2 * n)] + ([(n, 0, n), (-n, n, 2 * n)] if decoupled else [])
    for shift, lo, hi in spans:
        a0, a1 = max(r0, c0 - shift, lo), min(r1, c1 - shift, hi)
        if a0 < a1:
            offset = r0 + shift - c0  # column minus row of these entries inside the tile
            start = a0 - r0 if offset >= 0 else a0 + shift - c0
            s.diagonal(offset)[start : start + a1 - a0].fill_(float("-inf"))
    return s


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


def _flat(buf: torch.Tensor, rows: int, cols: int, offset: int = 0) -> torch.Tensor:
    return buf[offset : offset + rows * cols].view(rows, cols)  # contiguous, for out= arguments


#: Scratch memory kept per thread between calls of the symmetric kernel on the CPU, at most.
#: Freshly allocated megabytes cost a page fault per 4 KiB on first touch (several
#: microseconds each in a virtual machine: more than the arithmetic at N = 256); CUDA has
#: PyTorch's caching allocator for this. :func:`release_workspace` frees it.
WORKSPACE_BYTES = 48 << 20

_workspace = threading.local()


def _take(numel: int, like: torch.Tensor) -> torch.Tensor:
    """A 1-D buffer of at least ``numel`` entries of ``like``'s dtype, from this thread's pool."""
    free = getattr(_workspace, "free", None)
    if like.device.type != "cpu" or not free:
        return like.new_empty(numel)
    fits = [i for i, t in enumerate(free) if t.dtype == like.dtype and t.numel() >= numel]
    if not fits:
        return like.new_empty(numel)
    return free.pop(min(fits, key=lambda i: free[i].numel()))  # the smallest that fits


def _give(*bufs: torch.Tensor) -> None:
    """Return buffers from :func:`_take` to this thread's pool (what does not fit is freed)."""
    free = getattr(_workspace, "free", None)
    if free is None:
        free = _workspace.free = []
    for buf in bufs:
        held = sum(t.numel() * t.element_size() for t in free)
        if buf.device.type == "cpu" and held + buf.numel() * buf.element_size() <= WORKSPACE_BYTES:
            free.append(buf)


def release_workspace() -> None:
    """Free the scratch memory this thread keeps for the symmetric kernel (see
    :data:`WORKSPACE_BYTES`).

    Example:
        >>> release_workspace()
    """
    _workspace.free = []


def _tile_entries(k: int, b: int) -> int:
    """Entries of the tiles I <= J of a (K, K) matrix in square blocks of side ``b``."""
    return sum(min(b, k - r0) * (k - r0) for r0 in range(0, k, b))


def _tiled_forward(
    z: torch.Tensor, inv_tau: float, n: int, b: int, decoupled: bool, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row log-sum-exps ``lse`` (K,) over the tiles I <= J; returns them and, when the tiles
    fit in :data:`CACHE_ENTRIES` and a gradient is wanted, the tiles (one flat buffer)."""
    k = 2 * n
    starts = range(0, k, b)
    tile_entries = _tile_entries(k, b)
    cached = need_grad and tile_entries <= CACHE_ENTRIES
    arena = _take(tile_entries if cached else b * b, z)  # the kept tiles, or one tile reused
    scratch = _take(b * b, z)  # (b*b,)
    lse = torch.full((k,), float("-inf"), dtype=z.dtype, device=z.device)  # (K,)
    offset = 0
    for r0 in starts:
        r1 = min(r0 + b, k)
        for c0 in range(r0, k, b):
            c1 = min(c0 + b, k)
            tile = _flat(arena, r1 - r0, c1 - c0, offset)
            offset += tile.numel() if cached else 0
            s = _similarities(z, r0, r1, c0, c1, inv_tau, out=tile)  # (bi, bj) S[I, J]
            _exclude_(s, r0, c0, n, decoupled)
            work = _flat(scratch, r1 - r0, c1 - c0)  # (bi, bj)
            row, e, m = _tile_logsumexp(s, 1, work, keep=True)  # (bi,), (bi, bj), (bi, 1)
            torch.logaddexp(lse[r0:r1], row, out=lse[r0:r1])
            if c0 != r0:  # the same tile, read by columns, serves the rows of J
                # from the row pass's exponentials when exact: no second pass over the tile
                col = _columns_from_rows(e, m) if z.device.type == "cpu" else None
                if col is None:
                    col = _tile_logsumexp(s, 0, work)  # (bj,)
                torch.logaddexp(lse[c0:c1], col, out=lse[c0:c1])
    _give(scratch)
    if not cached:
        _give(arena)
        arena = None
    return lse, arena


def _tiled_backward(
    z: torch.Tensor,
    lse: torch.Tensor,
    arena: torch.Tensor | None,
    inv_tau: float,
    b: int,
    decoupled: bool,
) -> torch.Tensor:
    """``(P + P^T) Z`` (K, D) tile by tile, from the kept tiles or recomputing them."""
    k = z.shape[0]
    buf = _take(b * b, z) if arena is None else None  # (b*b,) recomputed tile
    q1 = _take(b * b, z)  # (b*b,)
    q2 = _take(b * b, z) if arena is not None else buf  # the kept tiles are read only
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
    shifted = up is not None and _tile_entries(k, b) > CACHE_ENTRIES
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
                q = torch.mm(zu, zv[c0:c1].t(), out=_flat(q1, r1 - r0, c1 - c0))
                _exclude_(q, r0, c0, k // 2, decoupled)  # (bi, bj) s - lse_I
            elif arena is not None:  # kept by the forward pass, read only
                s = _flat(arena, r1 - r0, c1 - c0, offset)  # (bi, bj)
                offset += s.numel()
            else:
                s = _similarities(z, r0, r1, c0, c1, inv_tau, out=_flat(buf, r1 - r0, c1 - c0))
                _exclude_(s, r0, c0, k // 2, decoupled)
            # Q[I, J] = P[I, J] + P[J, I]^T = exp(s - lse_I) + exp(s - lse_J^T)
            if not shifted:
                q = torch.sub(s, lse[r0:r1, None], out=_flat(q1, r1 - r0, c1 - c0))
            if up is not None:  # P[J, I]^T = P[I, J] exp(lse_I) exp(-lse_J), without an exp
                q = _exp_floored_(q)  # (bi, bj) P[I, J]
                p_t = torch.mul(q, up[r0:r1, None], out=_flat(q2, r1 - r0, c1 - c0))
                q.addcmul_(p_t, down[None, c0:c1])  # (bi, bj)
            else:
                p_t = torch.sub(s, lse[None, c0:c1], out=_flat(q2, r1 - r0, c1 - c0))
                q = _exp_floored_(q).add_(_exp_floored_(p_t))  # (bi, bj)
            grad[r0:r1].addmm_(q, z[c0:c1])  # (bi, D)
            if c0 != r0:
                grad[c0:c1].addmm_(q.t(), z[r0:r1])  # (bj, D)
    _give(q1, q2, *([] if arena is None else [arena]))  # q2 is buf when recomputing
    return grad


def _single_tile_forward(
    z: torch.Tensor, inv_tau: float, n: int, decoupled: bool, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The whole ``S`` as one tile (small K): ``lse`` (K,), and for the backward the shifted
    exponentials ``E = exp(S - rowmax)`` (>= e^-64, normal floats) and their row sums."""
    k = 2 * n
    arena = _take(k * k, z)  # (K*K,)
    s = _similarities(z, 0, k, 0, k, inv_tau, out=_flat(arena, k, k))  # (K, K)
    _exclude_(s, 0, 0, n, decoupled)
    m = s.amax(dim=1, keepdim=True)  # (K, 1) finite: every row has a candidate
    e = _exp_floored_(s.sub_(m))  # (K, K) in [e^-64, 1]; the row maximum gives 1
    sums = e.sum(dim=1)  # (K,) >= 1
    lse = sums.log().add_(m.squeeze(1))  # (K,)
    if not need_grad:
        _give(arena)
        return lse, None, None
    return lse, arena, sums


def _single_tile_backward(z: torch.Tensor, arena: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """``(P + P^T) Z`` (K, D) from the kept ``E``: with ``P = D^-1 E`` (``D`` the row sums),
    ``D^-1 (E Z) + E^T (D^-1 Z)``, two GEMMs (a transposed operand is free in BLAS, a
    transposed add over the tile is not), no pass over the tile."""
    k = z.shape[0]
    e = _flat(arena, k, k)  # (K, K)
    inv = sums.reciprocal()[:, None]  # (K, 1)
    grad = torch.mm(e, z).mul_(inv)  # (K, D) D^-1 E Z
    grad.addmm_(e.t(), z * inv)  # (K, D) + E^T D^-1 Z
    _give(arena)
    return grad


class SymmetricContrastiveFunction(torch.autograd.Function):
    """The single-process kernel: the candidates are the anchors, so ``S`` is symmetric.

    ``apply(z, weights, tau, decoupled, block_size, scale)`` with ``z`` (K, D) the stacked views
    ``[z1; z2]`` (anchor ``a``'s positive at ``(a + K/2) mod K``), ``weights`` (K,) and
    ``scale`` as in :class:`ContrastiveFunction`. Returns the scalar ``g * sum_a L_a``.

    Only the tiles ``S[I, J]`` with ``I <= J`` of square blocks are computed, and each serves
    the rows of ``I`` and (transposed) the rows of ``J``:

    * forward: the log-sum-exp ``lse_a`` of every row, accumulated tile by tile (each tile
      shifted by its own row and column maxima, so nothing is subnormal at any tau; on the
      CPU, when a tile's row maxima lie close, its column sums come from the row pass's
      exponentials by one matrix-vector product, see :func:`_columns_from_rows`);
    * backward: with ``P[a, b] = exp(s[a, b] - lse_a)``, the gradient is
      ``(g / tau) ((P + P^T) Z - (w_a + w_{pos(a)}) z_{pos(a)})``, and ``Q = P + P^T`` is
      symmetric, so each tile of ``Q`` gives ``Q[I, J] Z[J]`` to rows ``I`` and
      ``Q[I, J]^T Z[I]`` to rows ``J`` (on the CPU, when all ``lse_a`` lie within
      :data:`LSE_SPREAD`, ``P[J, I]^T`` is ``P[I, J]`` rescaled, without a second exp).

    That is two GEMM-equivalents per pass of half the matrix, about 2 K^2 D multiply-adds in
    all against 3 K^2 D for ``S``, ``C Z`` and ``C^T Z``. When the tiles fit in
    :data:`CACHE_ENTRIES` the forward keeps them and the backward does not recompute ``S``.
    When the whole matrix is one tile (``K <= block_size``, N <= 1024 by default) the forward
    keeps ``E = exp(S - rowmax)`` and the backward is ``D^-1 (E Z) + E^T (D^-1 Z)``: two GEMMs
    and no pass over the tile.
    Double backward falls back to autograd through :func:`dense_rows`, as in
    :class:`ContrastiveFunction`.

    Taught in notebook 04.
    """

    @staticmethod
    def forward(ctx, z, weights, tau, decoupled, block_size, scale):
        k = z.shape[0]
        n = k // 2
        b = min(block_size, k)
        inv_tau = 1.0 / tau
        need_grad = ctx.needs_input_grad[0]
        if k <= b:  # one tile: the whole matrix, whose row maxima are the global ones
            lse, arena, sums = _single_tile_forward(z, inv_tau, n, decoupled, need_grad)
        else:
            lse, arena = _tiled_forward(z, inv_tau, n, b, decoupled, need_grad)
            sums = None
        c = torch.linalg.vecdot(z[:n], z[n:]) * inv_tau  # (n,) s[a, a + n] = s[a + n, a]
        s_pos = torch.cat([c, c])  # (K,) s[a, pos(a)]
        loss = (lse - weights * s_pos).sum() * scale
        if need_grad:
            ctx.save_for_backward(z, weights, lse)
            ctx.arena, ctx.sums = arena, sums
            ctx.hyper = (tau, decoupled, b, scale)
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        z, weights, lse = ctx.saved_tensors
        tau, decoupled, b, scale = ctx.hyper
        k = z.shape[0]
        if torch.is_grad_enabled():  # create_graph=True: differentiable, by the dense form
            rows = torch.arange(k, device=z.device)  # (K,)
            grad_a, grad_c = dense_grads(z, z, rows, weights, grad_out, tau, decoupled, scale)
            return grad_a + grad_c, None, None, None, None, None
        arena, ctx.arena = ctx.arena, None  # a second backward recomputes the tiles
        if k <= b:  # one tile; a second backward recomputes it the same way, bit for bit
            sums = ctx.sums
            if arena is None:
                _, arena, sums = _single_tile_forward(z, 1.0 / tau, k // 2, decoupled, True)
            grad = _single_tile_backward(z, arena, sums)
        else:
            grad = _tiled_backward(z, lse, arena, 1.0 / tau, b, decoupled)
        # the positive term: -(w_a + w_{pos(a)}) z_{pos(a)}, both anchors of the pair pulling;
        # pos(a) = a + n on the first half, a - n on the second (positive_of with K = 2n)
        n = k // 2
        w_pair = (weights[:n] + weights[n:])[:, None]  # (n, 1)
        grad[:n].addcmul_(z[n:], w_pair, value=-1.0)  # (n, D)
        grad[n:].addcmul_(z[:n], w_pair, value=-1.0)  # (n, D)
        grad *= grad_out * (scale / tau)  # a 0-dim tensor: no host-device sync
        return grad, None, None, None, None, None


def fused_symmetric(
    z: torch.Tensor,
    weights: torch.Tensor,
    *,
    tau: float,
    decoupled: bool,
    block_size: int | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Scalar ``scale * sum_a L_a`` when the anchors are the candidates (one process).

    Args:
        z: (K, D) the stacked views ``[z1; z2]``, already normalised; K even.
        weights: (K,) weight ``w_a`` of each positive term.
        tau: temperature.
        decoupled: drop the positive from the denominator (DCL, DCLW).
        block_size: side of the square tiles; default :data:`SYMMETRIC_TILE`.
        scale: reduction factor, ``1 / K`` for the mean.

    Returns:
        0-dim tensor.

    Example:
        >>> import torch.nn.functional as F
        >>> z = F.normalize(torch.randn(8, 4, dtype=torch.float64), dim=1)
        >>> w = torch.ones(8, dtype=torch.float64)
        >>> a = fused_symmetric(z, w, tau=0.5, decoupled=True, block_size=3)
        >>> b = dense_rows(z, z, torch.arange(8), w, tau=0.5, decoupled=True).sum()
        >>> bool(torch.isclose(a, b))
        True

    Taught in notebook 04.
    """
    block = SYMMETRIC_TILE if block_size is None else int(block_size)
    return SymmetricContrastiveFunction.apply(
        z, weights.to(z.dtype), tau, decoupled, block, float(scale)
    )


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
