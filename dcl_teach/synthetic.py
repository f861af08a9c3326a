r"""Synthetic batch geometry, and the q_B and gradient statistics the figures of notebooks 03-05 draw.

* :func:`synthetic_views`, :func:`synthetic_pool`: pairs with a set positive cosine and
  negatives scattered around a set cosine (the batch geometry a learner controls);
* :func:`views_with_cosines`, :func:`default_cosines`: pairs with given positive cosines;
* :func:`anchor_terms`: q_B and the anchor-gradient magnitudes of InfoNCE and DCL per anchor,
  built on :func:`dcl_teach.grads.anchor_gradient`;
* :func:`qb_stats` / :class:`QBStats`, :func:`grad_curve`: the same over a pool of pairs cut
  into batches.

The gradient magnitude is the norm of the anchor term of anchor ``a``'s own gradient, Eq.
(2.5) of the course,

.. math::
    \frac{\partial L_a}{\partial z_a} = \frac{\alpha_a}{\tau}
    \Big( -z_{\mathrm{pos}(a)} + \sum_{j} p^{-}_{a,j} z_j \Big)

with ``alpha_a = q_a`` for InfoNCE and ``alpha_a = 1`` for DCL (Eq. 4.2), ``p^-`` the softmax
over the negatives alone. By default only its part tangent to the sphere at ``z_a`` is
measured (:func:`dcl_teach.grads.project_tangent`): the radial part is removed by the
normalisation of the encoder's output and moves nothing. The ``*_raw`` statistics keep the
norm before that projection. Either way the InfoNCE/DCL ratio is exactly q_B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dcl_teach.grads import anchor_gradient, project_tangent

#: Batch sizes offered by the sliders and drawn by :func:`grad_curve`.
BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512)


def _unit_orthogonal(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` with their component along the matching row of ``basis`` removed, normalised."""
    b = F.normalize(basis, dim=1)  # (N, D); a zero row stays zero
    return F.normalize(x - (x * b).sum(dim=1, keepdim=True) * b, dim=1)  # (N, D)


def synthetic_views(
    n: int, d: int, *, pos_sim: float, neg_sim: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Unit embeddings with a set positive cosine and negatives scattered around a set cosine.

    Each embedding is the sum of three orthogonal parts: a direction ``g`` shared by the whole
    batch (weight ``a``), a direction ``e_i`` of image i (weight ``b``) and a view direction
    ``+-u_i`` (weight ``c``):

    .. math:: z^{(1,2)}_i = a\,g + b\,e_i \pm c\,u_i,\quad a^2 = \text{neg\_sim},\quad
              b^2 = \tfrac{1 + \text{pos\_sim}}{2} - \text{neg\_sim},\quad
              c^2 = \tfrac{1 - \text{pos\_sim}}{2}

    so every row has norm 1, every positive pair has cosine exactly ``pos_sim``, and the
    cosine of two different images scatters around ``neg_sim`` with a spread of about
    ``1/sqrt(d)`` (random directions in ``d`` dimensions are nearly, not exactly, orthogonal).

    Args:
        n: N, number of pairs, >= 1.
        d: D, embedding dimension, >= 3.
        pos_sim: cosine of every positive pair, in [-1, 1].
        neg_sim: mean cosine between different images, in [0, (1 + pos_sim) / 2] (the upper
            limit is where the image part ``b`` vanishes; beyond it no such batch exists).
        generator: source of randomness.

    Returns:
        ``(z1, z2)``, each (N, D) float32 with unit rows.

    Raises:
        ValueError: for sizes or similarities outside the ranges above.

    Example:
        >>> z1, z2 = synthetic_views(4, 16, pos_sim=0.8, neg_sim=0.3,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> [round(c, 4) for c in (z1 * z2).sum(dim=1).tolist()]
        [0.8, 0.8, 0.8, 0.8]

    Taught in notebook 03.
    """
    if n < 1 or d < 3:
        raise ValueError(f"need n >= 1 pairs and d >= 3 dimensions, got n={n}, d={d}")
    if not -1.0 <= pos_sim <= 1.0:
        raise ValueError(f"pos_sim must be a cosine in [-1, 1], got {pos_sim}")
    if not 0.0 <= neg_sim <= (1.0 + pos_sim) / 2 + 1e-12:
        raise ValueError(
            f"neg_sim must lie in [0, (1 + pos_sim) / 2] = [0, {(1 + pos_sim) / 2:.3g}] for "
            f"pos_sim={pos_sim}, got {neg_sim}"
        )
    a = math.sqrt(neg_sim)
    b = math.sqrt(max((1.0 + pos_sim) / 2 - neg_sim, 0.0))
    c = math.sqrt((1.0 - pos_sim) / 2)
    g = F.normalize(torch.randn(1, d, generator=generator), dim=1).expand(n, d)  # (N, D)
    e = _unit_orthogonal(torch.randn(n, d, generator=generator), g)  # (N, D) image parts
    m = a * g + b * e  # (N, D) the part both views share, |m|^2 = a^2 + b^2
    u = _unit_orthogonal(torch.randn(n, d, generator=generator), m)  # (N, D) view parts
    return m + c * u, m - c * u


def synthetic_pool(
    *, pos_sim: float, neg_sim: float, num_pairs: int = 2048, dim: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool of synthetic pairs the figures draw batches from (fixed by ``seed``).

    Args:
        pos_sim: cosine of every positive pair (see :func:`synthetic_views`).
        neg_sim: mean cosine between different images.
        num_pairs: M, pairs in the pool.
        dim: D, embedding dimension.
        seed: seeds the generator, so the same arguments give the same pool.

    Returns:
        ``(z1, z2)``, each (M, D) float32 with unit rows.

    Raises:
        ValueError: as :func:`synthetic_views`.

    Example:
        >>> z1, z2 = synthetic_pool(pos_sim=0.5, neg_sim=0.1, num_pairs=8)
        >>> tuple(z1.shape)
        (8, 32)

    Taught in notebook 03.
    """
    g = torch.Generator().manual_seed(seed)
    return synthetic_views(num_pairs, dim, pos_sim=pos_sim, neg_sim=neg_sim, generator=g)


def views_with_cosines(
    cosines: torch.Tensor, d: int, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random unit pairs whose i-th positive cosine is ``cosines[i]``; other images are random.

    Args:
        cosines: (N,) target cosine of each positive pair, in [-1, 1].
        d: D, embedding dimension, >= 2.
        generator: source of randomness.

    Returns:
        ``(z1, z2)``, each (N, D) in the dtype of ``cosines``, with unit rows.

    Raises:
        ValueError: for a cosine outside [-1, 1] or d < 2.

    Example:
        >>> c = torch.tensor([1.0, 0.0, -0.5], dtype=torch.float64)
        >>> z1, z2 = views_with_cosines(c, 8, generator=torch.Generator().manual_seed(0))
        >>> [round(x, 6) for x in (z1 * z2).sum(dim=1).tolist()]
        [1.0, 0.0, -0.5]

    Taught in notebook 05.
    """
    if d < 2:
        raise ValueError(f"need d >= 2 dimensions, got {d}")
    if cosines.dim() != 1 or bool((cosines.abs() > 1).any()):
        raise ValueError(f"cosines must be a (N,) tensor with values in [-1, 1], got {cosines}")
    n, dtype = cosines.shape[0], cosines.dtype
    z1 = F.normalize(torch.randn(n, d, generator=generator, dtype=dtype), dim=1)  # (N, D)
    u = _unit_orthogonal(torch.randn(n, d, generator=generator, dtype=dtype), z1)  # (N, D)
    c = cosines[:, None]  # (N, 1)
    return z1, c * z1 + (1 - c * c).clamp_min(0).sqrt() * u  # (N, D), (N, D)


def default_cosines(n: int = 64, *, seed: int = 0) -> torch.Tensor:
    """Positive-pair cosines spread evenly at random over [0.2, 0.95], float64.

    Args:
        n: N, number of pairs.
        seed: seeds the draw.

    Returns:
        (N,) float64 cosines.

    Example:
        >>> c = default_cosines(5)
        >>> bool(((c >= 0.2) & (c <= 0.95)).all())
        True

    Taught in notebook 05.
    """
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.75 * torch.rand(n, generator=g, dtype=torch.float64)  # (N,)


def _anchor_norms(z1: torch.Tensor, z2: torch.Tensor, tau: float):
    """q, and the DCL anchor-term norms after and before the tangential projection."""
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)  # (..., N, D) unit rows
    q, g = anchor_gradient(z1, z2, tau=tau)  # (..., 2N), (..., 2N, D) Eq. (2.5) without q
    z = torch.cat([z1, z2], dim=-2)  # (..., 2N, D) the anchors
    return q, project_tangent(g, z).norm(dim=-1), g.norm(dim=-1)  # (..., 2N) each


def anchor_terms(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float, projected: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q_B and the anchor-gradient magnitudes of InfoNCE and DCL for every anchor of a batch.

    Args:
        z1: (N, D) or (B, N, D) first view; rows are L2-normalised here.
        z2: same shape, second view.
        tau: temperature, > 0.
        projected: measure only the part of each gradient tangent to the sphere (what the
            encoder feels through the normalisation); ``False`` gives the norm before
            projection, radial part included.

    Returns:
        ``(q, g_infonce, g_dcl)``, each (2N,) or (B, 2N) in the order of ``cat([z1, z2])``:
        the coupling factor q_B (Eq. 2.4), and the norms of the anchor terms of the InfoNCE
        (Eq. 2.5) and DCL (Eq. 4.2) gradients. ``g_infonce == q * g_dcl``.

    Raises:
        ValueError: for N < 2, mismatched shapes or tau <= 0.

    Example:
        >>> z = torch.ones(3, 2)  # everything alike: q = 4/5, and the anchor term vanishes
        >>> q, gi, gd = anchor_terms(z, z, tau=0.1)
        >>> round(q[0].item(), 4), round(gd[0].item(), 4)
        (0.8, 0.0)

    Taught in notebook 03.
    """
    q, tangential, raw = _anchor_norms(z1, z2, tau)
    g_dcl = tangential if projected else raw  # (..., 2N)
    return q, q * g_dcl, g_dcl


@dataclass(frozen=True)
class QBStats:
    """Per-anchor q_B and gradient magnitudes of a pool of pairs cut into batches.

    Attributes:
        q: (A,) q_B of every anchor of every batch, A = 2 * batch_size * num_batches.
        g_infonce: (A,) InfoNCE anchor-gradient magnitudes, tangential part.
        g_dcl: (A,) DCL anchor-gradient magnitudes, tangential part.
        batch_size: pairs per batch.
        num_batches: batches drawn from the pool.
        tau: temperature.
        g_infonce_raw: (A,) InfoNCE magnitudes before the projection (radial part included).
        g_dcl_raw: (A,) DCL magnitudes before the projection.
    """

    q: torch.Tensor
    g_infonce: torch.Tensor
    g_dcl: torch.Tensor
    batch_size: int
    num_batches: int
    tau: float
    g_infonce_raw: torch.Tensor | None = None
    g_dcl_raw: torch.Tensor | None = None

    @property
    def mean_q(self) -> float:
        """Mean q_B over all anchors."""
        return float(self.q.mean())

    @property
    def mean_g_infonce(self) -> float:
        """Mean InfoNCE anchor-gradient magnitude (tangential)."""
        return float(self.g_infonce.mean())

    @property
    def mean_g_dcl(self) -> float:
        """Mean DCL anchor-gradient magnitude (tangential)."""
        return float(self.g_dcl.mean())


def qb_stats(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> QBStats:
    """Shuffle a pool of M pairs, cut it into batches of ``batch_size`` and measure every anchor.

    The same pool cut into small or large batches isolates the effect of the batch size: the
    geometry is identical, only the number of negatives each anchor sees changes.

    Args:
        z1: (M, D) first views of the pool.
        z2: (M, D) second views.
        tau: temperature, > 0.
        batch_size: pairs per batch, 2 <= batch_size <= M; the last M mod batch_size pairs are
            dropped (as a training loader with ``drop_last`` does).
        generator: shuffles the pool; ``None`` keeps the pool's order.

    Returns:
        A :class:`QBStats` with ``2 * batch_size * (M // batch_size)`` anchors.

    Raises:
        ValueError: for a batch size outside [2, M].

    Example:
        >>> z1, z2 = synthetic_views(64, 16, pos_sim=0.5, neg_sim=0.1,
        ...                          generator=torch.Generator().manual_seed(0))
        >>> small, large = qb_stats(z1, z2, tau=0.1, batch_size=4), qb_stats(z1, z2, tau=0.1, batch_size=64)
        >>> small.q.shape, small.mean_q < large.mean_q
        (torch.Size([128]), True)

    Taught in notebook 03.
    """
    m = z1.shape[0]
    if not isinstance(batch_size, int) or not 2 <= batch_size <= m:
        raise ValueError(f"batch_size must be an int in [2, {m}] (the pool size), got {batch_size}")
    order = torch.randperm(m, generator=generator) if generator is not None else torch.arange(m)
    k = m // batch_size
    idx = order[: k * batch_size].view(k, batch_size)  # (k, n) the pairs of each batch
    q, tangential, raw = _anchor_norms(z1[idx], z2[idx], tau)  # (k, 2n) each
    q = q.flatten()  # (A,)
    tangential, raw = tangential.flatten(), raw.flatten()  # (A,) each
    return QBStats(q, q * tangential, tangential, batch_size, k, float(tau), q * raw, raw)


def grad_curve(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    seed: int = 0,
) -> tuple[list[int], list[float], list[float]]:
    """Mean (tangential) anchor-gradient magnitude of InfoNCE and DCL for each batch size.

    Args:
        z1: (M, D) first views of the pool.
        z2: (M, D) second views.
        tau: temperature, > 0.
        batch_sizes: the batch sizes to try; those outside [2, M] are skipped.
        seed: shuffles the pool as :func:`qb_stats` does.

    Returns:
        ``(sizes, infonce, dcl)``: the batch sizes used and the two means for each.

    Example:
        >>> z1, z2 = synthetic_pool(pos_sim=0.5, neg_sim=0.1, num_pairs=64)
        >>> sizes, gi, gd = grad_curve(z1, z2, tau=0.1, batch_sizes=(4, 64))
        >>> sizes, all(a < b for a, b in zip(gi, gd))
        ([4, 64], True)

    Taught in notebook 04.
    """
    sizes, gi, gd = [], [], []
    for b in batch_sizes:
        if 2 <= b <= z1.shape[0]:
            st = qb_stats(
                z1, z2, tau=tau, batch_size=b, generator=torch.Generator().manual_seed(seed)
            )
            sizes.append(b)
            gi.append(st.mean_g_infonce)
            gd.append(st.mean_g_dcl)
    return sizes, gi, gd
