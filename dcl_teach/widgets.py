r"""Figures and slider explorers for notebooks 03-05: q_B, InfoNCE vs DCL gradients, DCLW weights.

Every figure is a pure ``render_*(...) -> matplotlib.figure.Figure`` function, so that the
numbers it draws can be tested, plus a thin ``explore_*()`` wrapper that wires it to
``ipywidgets`` sliders. The data behind the figures (the synthetic batch geometry, q_B and the
anchor-gradient magnitudes) lives in :mod:`dcl_teach.synthetic`; its names are re-exported
here so that older imports keep working.

The figures are built with :class:`matplotlib.figure.Figure`, not ``pyplot``: they never enter
pyplot's list of open figures, so redrawing a slider a thousand times leaks nothing and a
figure is shown only when the notebook displays it. The explorers turn each figure into PNG
bytes and display them inside the widget's output area.

Gradient magnitudes are the norms of the anchor term of anchor a's own gradient, Eq. (2.5) of
the course, tangential part only (what the encoder feels after the normalisation; see
:mod:`dcl_teach.synthetic`). Their InfoNCE/DCL ratio is exactly q_B.
"""

from __future__ import annotations

import io
import math

import torch
from matplotlib.figure import Figure

from dcl_teach.inputs import check_positive
from dcl_teach.losses import vmf_weights_from_cosines
from dcl_teach.synthetic import (  # noqa: F401  (re-exported: the old home of these names)
    BATCH_SIZES,
    QBStats,
    anchor_terms,
    default_cosines,
    grad_curve,
    qb_stats,
    synthetic_pool,
    synthetic_views,
    views_with_cosines,
)


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
    show_dcl: bool = False,
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
        show_dcl: also print DCL's mean gradient magnitude (DCL is taught in notebook 04).

    Returns:
        A Figure with one Axes: the histogram (bar heights sum to the number of anchors), a
        dashed vertical line at the mean q_B (in the legend, with its value), and a text box
        with the mean tangential anchor-gradient magnitude of InfoNCE (and of DCL with
        ``show_dcl``).

    Raises:
        ValueError: for an unknown ``source`` string or a batch size outside [2, M].
        TypeError: for a ``source`` that is neither a string nor a pair.

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
    ax.axvline(st.mean_q, color="black", ls="--", lw=1.5, label=f"mean $q_B$ = {st.mean_q:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel(r"$q_B$ of an anchor")
    ax.set_ylabel("anchors")
    name = "synthetic" if isinstance(source, str) else "embeddings"
    ax.set_title(f"{name}: τ = {tau:.3g}, batch size N = {batch_size} ({st.num_batches} batches)")
    right = st.mean_q < 0.5  # keep the legend and text box away from the bulk of the histogram
    ax.legend(loc="upper right" if right else "upper left", fontsize=9)
    lines = [
        "mean tangential",
        "$\\|\\partial L_a/\\partial z_a\\|$",
        f"  InfoNCE {st.mean_g_infonce:.2f}",
    ]
    if show_dcl:
        lines.append(f"  DCL     {st.mean_g_dcl:.2f}")
    ax.text(
        0.98 if right else 0.02,
        0.80,
        "\n".join(lines),
        transform=ax.transAxes,
        va="top",
        ha="right" if right else "left",
        multialignment="left",
        family="monospace",
        fontsize=9,
        bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"},
    )
    return fig


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

    The *magnitude* of a loss at anchor a is the norm of the anchor term of its gradient,
    ``|dL_a/dz_a|`` (Eqs. 2.5 and 4.2 of the course), after the projection onto the tangent
    plane of the sphere at ``z_a``: the part the encoder feels through the normalisation.
    InfoNCE's magnitude is exactly q_B times DCL's, before and after the projection.

    Args:
        tau, batch_size, pos_sim, neg_sim, source, seed: as in :func:`render_qb_histogram`.
        batch_sizes: the batch sizes of the left panel's curves.

    Returns:
        A Figure with two Axes (and a colour bar). Left: mean magnitude against batch size
        (log scale), solid for the tangential magnitudes (lines 0 and 1: InfoNCE, DCL), faint
        dashed for the same before projection (lines 2 and 3), and a vertical line at
        ``batch_size``. Right: one point per anchor at ``batch_size``, DCL magnitude on x and
        InfoNCE magnitude on y, coloured by the anchor's q_B, under the diagonal y = x: each
        point sits at height q_B times its x.

    Example:
        >>> fig = render_grad_comparison(tau=0.1, batch_size=8)
        >>> [line.get_label() for line in fig.axes[0].lines[:2]]
        ['InfoNCE', 'DCL']

    Taught in notebook 04.
    """
    z1, z2 = _pool(source, pos_sim, neg_sim, seed)
    curves = {"sizes": [], "gi": [], "gd": [], "gi_raw": [], "gd_raw": []}
    for b in batch_sizes:  # the statistics of grad_curve, with the raw means kept as well
        if 2 <= b <= z1.shape[0]:
            s = qb_stats(
                z1, z2, tau=tau, batch_size=b, generator=torch.Generator().manual_seed(seed)
            )
            curves["sizes"].append(b)
            curves["gi"].append(s.mean_g_infonce)
            curves["gd"].append(s.mean_g_dcl)
            curves["gi_raw"].append(float(s.g_infonce_raw.mean()))
            curves["gd_raw"].append(float(s.g_dcl_raw.mean()))
    sizes = curves["sizes"]
    st = qb_stats(
        z1, z2, tau=tau, batch_size=batch_size, generator=torch.Generator().manual_seed(seed)
    )
    fig = Figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(sizes, curves["gi"], "o-", color="tab:blue", label="InfoNCE")
    left.plot(sizes, curves["gd"], "s-", color="tab:orange", label="DCL")
    faint = {"ls": "--", "lw": 1, "ms": 3, "alpha": 0.4}
    left.plot(
        sizes, curves["gi_raw"], "o", color="tab:blue", label="InfoNCE, before projection", **faint
    )
    left.plot(
        sizes, curves["gd_raw"], "s", color="tab:orange", label="DCL, before projection", **faint
    )
    left.axvline(batch_size, color="0.4", ls=":", lw=1)
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(b) for b in sizes])
    left.set_xlabel("batch size N (pairs)")
    left.set_ylabel("mean magnitude")
    left.set_title(f"τ = {tau:.3g}")
    left.legend(fontsize=8)
    x, y = st.g_dcl.numpy(), st.g_infonce.numpy()
    points = right.scatter(x, y, s=6, c=st.q.numpy(), cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(points, ax=right, label=r"$q_B$ of the anchor")
    top = float(max(x.max(), 1e-12)) * 1.05
    right.plot([0, top], [0, top], color="0.4", lw=1, label=r"y = x ($q_B$ = 1)")
    right.set_xlim(0, top)
    right.set_ylim(0, top)
    right.set_xlabel("DCL magnitude")
    right.set_ylabel("InfoNCE magnitude")
    right.set_title(f"N = {batch_size}: one point per anchor, mean $q_B$ = {st.mean_q:.3f}")
    fig.suptitle(
        r"magnitude of anchor $a$: $\|\partial L_a/\partial z_a\|$, tangential part "
        r"(projected onto the sphere at $z_a$) unless marked",
        fontsize=10,
    )
    right.legend(loc="upper left")
    return fig


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
    ax.set_title(f"σ = {sigma:.3g}, N = {c.shape[0]} pairs")
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
        value=value,
        base=10,
        min=-2,
        max=0,
        step=0.05,
        description="tau",
        continuous_update=False,
        readout_format=".3f",
        style=STYLE,
    )


def _batch_slider(value: int = 32):
    import ipywidgets as widgets

    return widgets.SelectionSlider(
        options=list(BATCH_SIZES),
        value=value,
        description="batch size",
        continuous_update=False,
        style=STYLE,
    )


def _geometry_sliders(pos_sim: float, neg_sim: float) -> dict:
    import ipywidgets as widgets

    style = STYLE
    return {
        "pos_sim": widgets.FloatSlider(
            value=pos_sim,
            min=0.0,
            max=1.0,
            step=0.05,
            description="positive similarity",
            continuous_update=False,
            style=style,
        ),
        "neg_sim": widgets.FloatSlider(
            value=neg_sim,
            min=0.0,
            max=0.5,
            step=0.05,
            description="negative similarity",
            continuous_update=False,
            style=style,
        ),
    }


def explore_qb(
    embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    seed: int = 0,
    show_dcl: bool = False,
):
    """Sliders "tau" and "batch size" (and the synthetic geometry) over :func:`render_qb_histogram`.

    Args:
        embeddings: optional ``(z1, z2)`` of a trained encoder; adds a "geometry" menu that
            switches between them and the synthetic batch.
        seed: as in :func:`render_qb_histogram`.
        show_dcl: as in :func:`render_qb_histogram` (notebook 04 turns it on).

    Returns:
        An ``ipywidgets.interactive``; its output area shows the figure as a PNG image.

    Taught in notebook 03.
    """
    import ipywidgets as widgets

    controls = {"tau": _tau_slider(), "batch_size": _batch_slider()}
    controls.update(_geometry_sliders(0.5, 0.1))
    if embeddings is not None:
        controls["geometry"] = widgets.Dropdown(
            options=["synthetic", "trained encoder"],
            value="synthetic",
            description="geometry",
            style=STYLE,
        )

    def render(*, geometry: str = "synthetic", **values):
        source = embeddings if geometry == "trained encoder" else "synthetic"
        return render_qb_histogram(source=source, **values)

    return _explorer(render, controls, {"seed": seed, "show_dcl": show_dcl})


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
        value=0.5,
        base=10,
        min=-1.5,
        max=0.5,
        step=0.05,
        description="sigma",
        continuous_update=False,
        readout_format=".3f",
        style=STYLE,
    )
    return _explorer(render_vmf_weights, {"sigma": sigma}, {"cosines": cosines})
