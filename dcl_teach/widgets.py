r"""Figures and slider explorers for notebooks 03-05: q_B, InfoNCE vs DCL gradients, DCLW weights.

Two layers, so that every number a figure draws can be tested:

* pure data helpers: :func:`synthetic_views` (a batch geometry the learner controls),
  :func:`views_with_cosines`, :func:`anchor_terms` (q_B and the anchor-gradient magnitudes of
  InfoNCE and DCL), :func:`qb_stats` (the same over a pool of pairs cut into batches);
* pure ``render_*(...) -> matplotlib.figure.Figure`` functions that draw them, plus thin
  ``explore_*()`` wrappers that wire a renderer to ``ipywidgets`` sliders.

The figures are built with :class:`matplotlib.figure.Figure`, not ``pyplot``: they never enter
pyplot's list of open figures, so redrawing a slider a thousand times leaks nothing and a
figure is shown only when the notebook displays it. The explorers turn each figure into PNG
bytes and display them inside the widget's output area.

The gradient magnitude used throughout is the norm of the anchor term of the per-anchor
gradient with respect to the (unit) anchor embedding, Eq. (2.5) of the course:

.. math::
    \Big\|\frac{\partial L_a}{\partial z_a}\Big\| = \frac{\alpha_a}{\tau}
    \Big\| z_{p(a)} - \sum_{j} p^{-}_{a,j} z_j \Big\|

with ``alpha_a = q_a`` for InfoNCE and ``alpha_a = 1`` for DCL (Eq. 4.2), ``p^-`` the softmax
over the negatives alone. Their ratio is exactly q_B.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from dcl_teach.losses import check_positive, vmf_weights_from_cosines
from dcl_teach.masks import negative_mask, positive_index

#: Batch sizes offered by the sliders and drawn by :func:`render_grad_comparison`.
BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128, 256, 512)


def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(seed)


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


def anchor_terms(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q_B and the anchor-gradient magnitudes of InfoNCE and DCL for every anchor of a batch.

    Args:
        z1: (N, D) or (B, N, D) first view; rows are L2-normalised here.
        z2: same shape, second view.
        tau: temperature, > 0.

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
    tau = check_positive("tau", tau)
    if z1.shape != z2.shape or z1.dim() not in (2, 3) or z1.shape[-2] < 2:
        raise ValueError(
            f"z1 and z2 must both be (N, D) or (B, N, D) with N >= 2, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    n = z1.shape[-2]
    z = F.normalize(torch.cat([z1, z2], dim=-2), dim=-1)  # (..., 2N, D)
    s = z @ z.transpose(-1, -2) / tau  # (..., 2N, 2N)
    pos = positive_index(n, device=z.device)  # (2N,)
    s_pos = s[..., torch.arange(2 * n), pos]  # (..., 2N)
    s_neg = s.masked_fill(~negative_mask(n, device=z.device), float("-inf"))  # (..., 2N, 2N)
    q = torch.sigmoid(s_neg.logsumexp(dim=-1) - s_pos)  # (..., 2N) U / (e^pos + U)
    p_neg = torch.softmax(s_neg, dim=-1)  # (..., 2N, 2N) softmax over the negatives alone
    pull = z[..., pos, :] - p_neg @ z  # (..., 2N, D) z_p - sum_j p_neg[a, j] z_j
    g_dcl = pull.norm(dim=-1) / tau  # (..., 2N)
    return q, q * g_dcl, g_dcl


@dataclass(frozen=True)
class QBStats:
    """Per-anchor q_B and gradient magnitudes of a pool of pairs cut into batches.

    Attributes:
        q: (A,) q_B of every anchor of every batch, A = 2 * batch_size * num_batches.
        g_infonce: (A,) InfoNCE anchor-gradient magnitudes.
        g_dcl: (A,) DCL anchor-gradient magnitudes.
        batch_size: pairs per batch.
        num_batches: batches drawn from the pool.
        tau: temperature.
    """

    q: torch.Tensor
    g_infonce: torch.Tensor
    g_dcl: torch.Tensor
    batch_size: int
    num_batches: int
    tau: float

    @property
    def mean_q(self) -> float:
        """Mean q_B over all anchors."""
        return float(self.q.mean())

    @property
    def mean_g_infonce(self) -> float:
        """Mean InfoNCE anchor-gradient magnitude."""
        return float(self.g_infonce.mean())

    @property
    def mean_g_dcl(self) -> float:
        """Mean DCL anchor-gradient magnitude."""
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
    q, gi, gd = anchor_terms(z1[idx], z2[idx], tau=tau)  # (k, 2n) each
    return QBStats(q.flatten(), gi.flatten(), gd.flatten(), batch_size, k, float(tau))


def synthetic_pool(
    *, pos_sim: float, neg_sim: float, num_pairs: int = 2048, dim: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool of synthetic pairs the figures draw batches from (fixed by ``seed``).

    Example:
        >>> z1, z2 = synthetic_pool(pos_sim=0.5, neg_sim=0.1, num_pairs=8)
        >>> tuple(z1.shape)
        (8, 32)

    Taught in notebook 03.
    """
    g = torch.Generator().manual_seed(seed)
    return synthetic_views(num_pairs, dim, pos_sim=pos_sim, neg_sim=neg_sim, generator=g)


def _pool(source, pos_sim, neg_sim, seed):
    if isinstance(source, str):
        if source != "synthetic":
            raise ValueError(f'source must be "synthetic" or a pair (z1, z2), got {source!r}')
        return synthetic_pool(pos_sim=pos_sim, neg_sim=neg_sim, seed=seed)
    if not (isinstance(source, (tuple, list)) and len(source) == 2):
        raise TypeError(f"source must be 'synthetic' or a pair (z1, z2), got {type(source)}")
    return source[0], source[1]


def render_qb_histogram(
    *,
    tau: float,
    batch_size: int,
    pos_sim: float = 0.5,
    neg_sim: float = 0.1,
    source: str | tuple[torch.Tensor, torch.Tensor] = "synthetic",
    seed: int = 0,
    bins: int = 40,
) -> Figure:
    """Histogram of q_B over one epoch of batches, with mean q_B and gradient magnitudes.

    Args:
        tau: temperature, > 0.
        batch_size: pairs per batch.
        pos_sim: positive cosine of the synthetic geometry (ignored for embeddings).
        neg_sim: mean negative cosine of the synthetic geometry (ignored for embeddings).
        source: ``"synthetic"`` (:func:`synthetic_pool`) or a pair ``(z1, z2)`` of (M, D)
            embeddings, e.g. two augmented views of a dataset through a trained encoder.
        seed: fixes the synthetic pool and the shuffling into batches.
        bins: histogram bins on [0, 1].

    Returns:
        A Figure with one Axes: the histogram (bar heights sum to the number of anchors), a
        vertical line at the mean q_B, and a text box with the mean q_B and the mean anchor
        gradient magnitude of InfoNCE and DCL.

    Example:
        >>> fig = render_qb_histogram(tau=0.1, batch_size=16)
        >>> int(sum(p.get_height() for p in fig.axes[0].patches))  # 2048 // 16 batches x 32
        4096

    Taught in notebook 03.
    """
    z1, z2 = _pool(source, pos_sim, neg_sim, seed)
    st = qb_stats(
        z1, z2, tau=tau, batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    edges = torch.linspace(0, 1, bins + 1).tolist()
    ax.hist(st.q.numpy(), bins=edges, color="tab:blue", alpha=0.8)
    ax.axvline(st.mean_q, color="black", ls="--", lw=1.5)
    ax.set_xlim(0, 1)
    ax.set_xlabel(r"$q_B$ of an anchor")
    ax.set_ylabel("anchors")
    name = "synthetic" if isinstance(source, str) else "embeddings"
    ax.set_title(f"{name}: tau = {tau:.3g}, batch size = {batch_size} ({st.num_batches} batches)")
    right = st.mean_q < 0.5  # keep the text box away from the bulk of the histogram
    ax.text(
        0.98 if right else 0.02,
        0.95,
        f"mean $q_B$ = {st.mean_q:.3f}\n"
        f"mean $\\|\\partial L_a/\\partial z_a\\|$\n  InfoNCE {st.mean_g_infonce:.2f}\n"
        f"  DCL     {st.mean_g_dcl:.2f}",
        transform=ax.transAxes,
        va="top",
        ha="right" if right else "left",
        multialignment="left",
        family="monospace",
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    return fig


def grad_curve(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    seed: int = 0,
) -> tuple[list[int], list[float], list[float]]:
    """Mean anchor-gradient magnitude of InfoNCE and DCL for each batch size that fits the pool.

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


def render_grad_comparison(
    *,
    tau: float,
    batch_size: int,
    pos_sim: float = 0.5,
    neg_sim: float = 0.1,
    source: str | tuple[torch.Tensor, torch.Tensor] = "synthetic",
    seed: int = 0,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> Figure:
    """InfoNCE vs DCL anchor-gradient magnitudes, across batch sizes and for one batch size.

    Args:
        tau, batch_size, pos_sim, neg_sim, source, seed: as in :func:`render_qb_histogram`.
        batch_sizes: the batch sizes of the left panel's curves.

    Returns:
        A Figure with two Axes. Left: mean magnitude against batch size (log scale), one line
        per loss, and a vertical line at ``batch_size``. Right: one point per anchor at
        ``batch_size``, DCL magnitude on x and InfoNCE on y, under the diagonal y = x: each
        point sits at height q_B times its x.

    Example:
        >>> fig = render_grad_comparison(tau=0.1, batch_size=8)
        >>> [line.get_label() for line in fig.axes[0].lines[:2]]
        ['InfoNCE', 'DCL']

    Taught in notebook 04.
    """
    z1, z2 = _pool(source, pos_sim, neg_sim, seed)
    sizes, gi, gd = grad_curve(z1, z2, tau=tau, batch_sizes=batch_sizes, seed=seed)
    st = qb_stats(
        z1, z2, tau=tau, batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(sizes, gi, "o-", color="tab:blue", label="InfoNCE")
    left.plot(sizes, gd, "s-", color="tab:orange", label="DCL")
    left.axvline(batch_size, color="0.4", ls=":", lw=1)
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(b) for b in sizes])
    left.set_xlabel("batch size N")
    left.set_ylabel(r"mean $\|\partial L_a/\partial z_a\|$")
    left.set_title(f"tau = {tau:.3g}")
    left.legend()
    x, y = st.g_dcl.numpy(), st.g_infonce.numpy()
    right.scatter(x, y, s=6, alpha=0.5, color="tab:blue")
    top = float(max(x.max(), 1e-12)) * 1.05
    right.plot([0, top], [0, top], color="tab:orange", lw=1, label="DCL (y = x)")
    right.set_xlim(0, top)
    right.set_ylim(0, top)
    right.set_xlabel("DCL magnitude")
    right.set_ylabel("InfoNCE magnitude")
    right.set_title(f"batch size {batch_size}: mean $q_B$ = {st.mean_q:.3f}")
    right.legend(loc="upper left")
    return fig


def default_cosines(n: int = 64, *, seed: int = 0) -> torch.Tensor:
    """Positive-pair cosines spread evenly at random over [0.2, 0.95], float64.

    Example:
        >>> c = default_cosines(5)
        >>> bool(((c >= 0.2) & (c <= 0.95)).all())
        True

    Taught in notebook 05.
    """
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.75 * torch.rand(n, generator=g, dtype=torch.float64)  # (N,)


def render_vmf_weights(*, sigma: float, cosines: torch.Tensor | None = None) -> Figure:
    """DCLW weights ``w_i`` (Eq. 5.1) against the cosine of each positive pair.

    Args:
        sigma: width of the weighting, > 0.
        cosines: (N,) positive-pair cosines; default :func:`default_cosines`.

    Returns:
        A Figure with one Axes: one point per pair (its offsets are ``(c_i, w_i)``), the curve
        ``w(c)`` for this batch, dashed lines at w = 1 (the mean) and w = 0, and a text box
        with the mean weight, the smallest weight and how many weights are negative.

    Example:
        >>> fig = render_vmf_weights(sigma=0.5)
        >>> fig.axes[0].collections[0].get_offsets().shape
        (64, 2)

    Taught in notebook 05.
    """
    sigma = check_positive("sigma", sigma)
    c = default_cosines() if cosines is None else cosines.detach().to(torch.float64).cpu()
    w = vmf_weights_from_cosines(c, sigma=sigma)  # (N,)
    grid = torch.linspace(float(c.min()), float(c.max()), 200, dtype=torch.float64)  # (200,)
    # w(c) = 2 - exp(c / sigma) / mean_j exp(c_j / sigma), in log space to avoid overflow
    log_mean = torch.logsumexp(c / sigma, dim=0) - math.log(c.shape[0])
    curve = 2 - torch.exp(grid / sigma - log_mean)  # (200,)
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(grid.numpy(), curve.numpy(), color="tab:orange", lw=1.5, label=r"$w(c)$")
    ax.scatter(c.numpy(), w.numpy(), s=14, color="tab:blue", zorder=3, label="pairs")
    ax.axhline(1.0, color="0.3", ls="--", lw=1)
    ax.axhline(0.0, color="tab:red", ls=":", lw=1)
    ax.set_xlabel(r"cosine $c_i$ of positive pair $i$")
    ax.set_ylabel(r"weight $w_i$")
    ax.set_title(f"sigma = {sigma:.3g}, N = {c.shape[0]} pairs")
    negative = int((w < 0).sum())
    ax.text(
        0.02,
        0.05,
        f"mean w = {float(w.mean()):.3f}\nmin w  = {float(w.min()):.3f}\n"
        f"w < 0: {negative} of {c.shape[0]}",
        transform=ax.transAxes,
        va="bottom",
        family="monospace",
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    ax.legend(loc="upper right")
    return fig


def figure_png(fig: Figure, *, dpi: int = 80) -> bytes:
    """The figure as PNG bytes.

    Example:
        >>> figure_png(render_vmf_weights(sigma=0.5))[:4]
        b'\\x89PNG'

    Taught in notebook 03.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _explorer(render, controls: dict, fixed: dict):
    """``ipywidgets.interactive`` whose callback displays ``render(**values)`` as a PNG image."""
    import ipywidgets as widgets
    from IPython.display import Image, display

    def redraw(**values):
        png = figure_png(render(**values, **fixed))
        display(Image(data=png, format="png"))
        return png

    return widgets.interactive(redraw, **controls)


# One label width for every control, so that the sliders line up under each other.
STYLE = {"description_width": "10em"}


def _tau_slider(value: float = 0.1):
    import ipywidgets as widgets

    return widgets.FloatLogSlider(
        value=value, base=10, min=-2, max=0, step=0.05, description="tau",
        continuous_update=False, readout_format=".3f", style=STYLE,
    )  # fmt: skip


def _batch_slider(value: int = 32):
    import ipywidgets as widgets

    return widgets.SelectionSlider(
        options=list(BATCH_SIZES), value=value, description="batch size",
        continuous_update=False, style=STYLE,
    )  # fmt: skip


def _geometry_sliders(pos_sim: float, neg_sim: float) -> dict:
    import ipywidgets as widgets

    style = STYLE
    return {
        "pos_sim": widgets.FloatSlider(
            value=pos_sim, min=0.0, max=1.0, step=0.05, description="positive similarity",
            continuous_update=False, style=style,
        ),
        "neg_sim": widgets.FloatSlider(
            value=neg_sim, min=0.0, max=0.5, step=0.05, description="negative similarity",
            continuous_update=False, style=style,
        ),
    }  # fmt: skip


def explore_qb(embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, *, seed: int = 0):
    """Sliders "tau" and "batch size" (and the synthetic geometry) over :func:`render_qb_histogram`.

    Args:
        embeddings: optional ``(z1, z2)`` of a trained encoder; adds a "geometry" menu that
            switches between them and the synthetic batch.
        seed: as in :func:`render_qb_histogram`.

    Returns:
        An ``ipywidgets.interactive``; its output area shows the figure as a PNG image.

    Taught in notebook 03.
    """
    import ipywidgets as widgets

    controls = {"tau": _tau_slider(), "batch_size": _batch_slider()}
    controls.update(_geometry_sliders(0.5, 0.1))
    if embeddings is not None:
        controls["geometry"] = widgets.Dropdown(
            options=["synthetic", "trained encoder"], value="synthetic", description="geometry",
            style=STYLE,
        )  # fmt: skip

    def render(*, geometry: str = "synthetic", **values):
        source = embeddings if geometry == "trained encoder" else "synthetic"
        return render_qb_histogram(source=source, **values)

    return _explorer(render, controls, {"seed": seed})


def explore_grad_comparison(*, seed: int = 0):
    """Sliders "tau", "batch size" and the synthetic geometry over :func:`render_grad_comparison`.

    Taught in notebook 04.
    """
    controls = {"tau": _tau_slider(), "batch_size": _batch_slider()}
    controls.update(_geometry_sliders(0.5, 0.1))
    return _explorer(render_grad_comparison, controls, {"seed": seed})


def explore_vmf_weights(cosines: torch.Tensor | None = None):
    """A "sigma" slider over :func:`render_vmf_weights`.

    Taught in notebook 05.
    """
    import ipywidgets as widgets

    sigma = widgets.FloatLogSlider(
        value=0.5, base=10, min=-1.5, max=0.5, step=0.05, description="sigma",
        continuous_update=False, readout_format=".3f", style=STYLE,
    )  # fmt: skip
    return _explorer(render_vmf_weights, {"sigma": sigma}, {"cosines": cosines})
