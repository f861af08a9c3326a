r"""Alignment and uniformity (Wang & Isola, 2020), the loss split, free points on the sphere S^2.

Per anchor ``a`` of unit ``z = cat([z1, z2])``, with ``s = z z^T / tau`` and ``U_a`` the sum of
``exp(s[a, j])`` over its 2N - 2 negatives (Eq. 2 of Yeh et al.):

    L^DCL_a     = -s[a, pos(a)] + log U_a                     (alignment + uniformity terms)
    L^InfoNCE_a = L^DCL_a + log(1 + exp(s[a, pos(a)]) / U_a)  (+ the positive's share, -log q_a)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from dcl_teach.grads import _similarities
from dcl_teach.inputs import check_embeddings, check_positive
from dcl_teach.losses import LOSSES
from dcl_teach.widgets import figure_png

SPHERE_LOSSES = {"infonce": "InfoNCE", "dcl": "DCL"}


def _frame_steps(steps: int, frames: int) -> list[int]:
    """The steps after which :func:`optimise_on_sphere` keeps a frame (evenly spaced, unique)."""
    return sorted(set(torch.linspace(0, steps, frames).round().long().tolist()))


def _unit(z: torch.Tensor, normalize: bool) -> torch.Tensor:
    return F.normalize(z, dim=-1) if normalize else z


def alignment(
    z1: torch.Tensor, z2: torch.Tensor, *, alpha: float = 2.0, normalize: bool = True
) -> torch.Tensor:
    r"""Alignment of the positive pairs, Eq. (7.1) of the course; Wang & Isola (2020).

    .. math:: \mathcal{L}_{\text{align}} = \frac{1}{N}\sum_i \lVert z^{(1)}_i - z^{(2)}_i \rVert_2^{\alpha}

    Args:
        z1: (N, D) first view.
        z2: (N, D) second view; row i is the positive of row i of ``z1``.
        alpha: exponent, > 0 (2: the mean squared distance, ``2 - 2 cos`` on the sphere).
        normalize: L2-normalise the rows first, as Wang & Isola do.

    Returns:
        0-dim tensor in [0, 2^alpha] for unit rows; 0 when every pair coincides.

    Raises:
        TypeError, ValueError: views the losses would reject, or alpha <= 0.

    Example:
        >>> z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> alignment(z1, torch.tensor([[1.0, 0.0], [0.0, -1.0]])).item()  # 0 and 4
        2.0

    Taught in notebook 07.
    """
    alpha = check_positive("alpha", alpha)
    check_embeddings(z1, z2, min_pairs=1, loss="alignment", nonzero_rows=normalize)
    diff = _unit(z1, normalize) - _unit(z2, normalize)  # (N, D)
    return torch.linalg.vector_norm(diff, dim=1).pow(alpha).mean()


def uniformity(z: torch.Tensor, *, t: float = 2.0, normalize: bool = True) -> torch.Tensor:
    r"""Uniformity of a set of embeddings, Eq. (7.2) of the course; Wang & Isola (2020).

    .. math:: \mathcal{L}_{\text{uniform}} = \log \frac{2}{M(M-1)} \sum_{i<j} e^{-t \lVert z_i - z_j \rVert_2^2}

    Computed with ``logsumexp``. Wang & Isola apply it to each view and average the two.

    Args:
        z: (M, D) embeddings, M >= 2.
        t: width of the Gaussian potential, > 0.
        normalize: L2-normalise the rows first.

    Returns:
        0-dim tensor <= 0: 0 when all rows coincide, lower when they spread out.

    Raises:
        TypeError, ValueError: not an (M, D) floating tensor with M >= 2, or t <= 0.

    Example:
        >>> uniformity(torch.tensor([[0.0, 1.0], [0.0, -1.0]])).item()  # antipodal: -2 * 4
        -8.0

    Taught in notebook 07.
    """
    t = check_positive("t", t)
    check_embeddings(z, z, min_pairs=2, loss="uniformity", nonzero_rows=normalize)
    d2 = torch.pdist(_unit(z, normalize)).pow(2)  # (M(M-1)/2,) squared distances, i < j
    return torch.logsumexp(-t * d2, dim=0) - math.log(d2.numel())


class LossTerms(NamedTuple):
    """Per-anchor terms (2N,) of Eqs. (7.3) and (7.5), in the order of ``cat([z1, z2])``."""

    align: torch.Tensor  # -s[a, pos(a)]: -cos / tau
    uniform: torch.Tensor  # log U_a: log-sum-exp over the 2N - 2 negatives
    positive: torch.Tensor  # log(1 + e^{s_pos} / U_a) = -log q_a: InfoNCE only


def loss_terms(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> LossTerms:
    r"""Split DCL and InfoNCE into alignment and uniformity terms, Eqs. (7.3) and (7.5).

    ``align + uniform`` is :func:`dcl_teach.losses.dcl` per anchor, and
    ``align + uniform + positive`` is :func:`dcl_teach.losses.info_nce` per anchor.

    Args:
        z1: (N, D) first view.
        z2: (N, D) second view.
        tau: temperature, > 0.
        normalize: L2-normalise the rows first.

    Returns:
        :class:`LossTerms` of three (2N,) tensors.

    Raises:
        TypeError, ValueError: as :func:`dcl_teach.losses.dcl`.

    Example:
        >>> z = torch.ones(3, 2)  # all alike: -1/tau + log(4 e^{1/tau}), and log(1 + 1/4)
        >>> terms = loss_terms(z, z, tau=1.0)
        >>> [round(float(x[0]), 4) for x in terms]
        [-1.0, 2.3863, 0.2231]

    Taught in notebook 07.
    """
    tau = check_positive("tau", tau)
    check_embeddings(z1, z2, min_pairs=2, loss="DCL", nonzero_rows=normalize)
    _, _, s_pos, s_neg = _similarities(_unit(z1, normalize), _unit(z2, normalize), tau)
    log_u = s_neg.logsumexp(dim=1)  # (2N,) log U_a, masked like the losses (dcl_teach.masks)
    return LossTerms(-s_pos, log_u, F.softplus(s_pos - log_u))  # softplus(x) = log(1 + e^x)


class SphereRun(NamedTuple):
    """A trajectory of free embeddings: frames ``z1, z2`` of shape (T, N, D) after ``steps``."""

    z1: torch.Tensor  # (T, N, D) unit rows, frame 0 is the start
    z2: torch.Tensor  # (T, N, D)
    steps: torch.Tensor  # (T,) the step after which each frame was taken
    loss: torch.Tensor  # (S,) the loss before each of the S steps
    name: str  # "infonce" or "dcl"
    tau: float


def optimise_on_sphere(
    n: int,
    *,
    loss: str = "dcl",
    tau: float = 0.2,
    steps: int = 300,
    lr: float = 0.05,
    dim: int = 3,
    frames: int = 31,
    seed: int = 0,
) -> SphereRun:
    r"""Gradient descent on N free pairs of unit vectors (no encoder), under InfoNCE or DCL.

    Each step moves every vector by ``-lr * tau`` times the gradient of the *summed* loss (a
    turn of about ``lr`` radians at any temperature; the gradient is tangent, the losses
    normalise inside), then back onto the sphere. Both views start at independent random
    points, the same for both losses at the same seed.

    Args:
        n: N, the number of pairs, >= 2.
        loss: ``"infonce"`` or ``"dcl"``.
        tau: temperature, > 0.
        steps: gradient steps, >= 1.
        lr: step size in radians per unit of ``tau * gradient``, > 0.
        dim: D, 3 for the sphere S^2.
        frames: how many evenly spaced frames to keep (the first and last always), >= 2.
        seed: seeds the start.

    Returns:
        :class:`SphereRun`, float64.

    Raises:
        ValueError: an unknown loss, n < 2, steps < 1, frames < 2 or dim < 2.

    Example:
        >>> run = optimise_on_sphere(4, loss="dcl", steps=20, frames=3)
        >>> tuple(run.z1.shape), run.steps.tolist(), bool(run.loss[-1] < run.loss[0])
        ((3, 4, 3), [0, 10, 20], True)

    Taught in notebook 07.
    """
    if loss not in SPHERE_LOSSES:
        raise ValueError(f"loss must be one of {sorted(SPHERE_LOSSES)}, got {loss!r}")
    for name, value, least in (
        ("n", n, 2),
        ("steps", steps, 1),
        ("frames", frames, 2),
        ("dim", dim, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    tau, lr = check_positive("tau", tau), check_positive("lr", lr)
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(2, n, dim, generator=g, dtype=torch.float64), dim=-1)  # (2, N, D)
    keep = set(_frame_steps(steps, frames))
    kept, at, curve = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a (2N, 2N) problem: threads cost more than they save
    try:
        for step in range(steps + 1):
            if step in keep:
                kept.append(z.clone())
                at.append(step)
            if step == steps:
                break
            z.requires_grad_(True)
            value = LOSSES[loss](z[0], z[1], tau=tau, reduction="sum")
            (grad,) = torch.autograd.grad(value, z)  # (2, N, D) tangent to the sphere
            curve.append(value.item() / (2 * n))  # report the mean, as everywhere in the course
            z = F.normalize(z.detach() - lr * tau * grad, dim=-1)  # (2, N, D) back on S^2
    finally:
        torch.set_num_threads(threads)
    frames_z = torch.stack(kept)  # (T, 2, N, D)
    return SphereRun(
        frames_z[:, 0],
        frames_z[:, 1],
        torch.tensor(at),
        torch.tensor(curve, dtype=torch.float64),
        loss,
        tau,
    )


def run_measures(run: SphereRun, *, t: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment (7.1) and uniformity (7.2, mean of the two views) of every frame, (T,) each.

    Example:
        >>> align, unif = run_measures(optimise_on_sphere(4, steps=5, frames=2))
        >>> tuple(align.shape), tuple(unif.shape)
        ((2,), (2,))

    Taught in notebook 07.
    """
    align = torch.stack([alignment(a, b) for a, b in zip(run.z1, run.z2)])  # (T,)
    unif = torch.stack(
        [(uniformity(a, t=t) + uniformity(b, t=t)) / 2 for a, b in zip(run.z1, run.z2)]
    )  # (T,)
    return align, unif


def _sphere_axes(ax, run: SphereRun, frame: int) -> None:
    u, v = torch.meshgrid(
        torch.linspace(0, 2 * math.pi, 17), torch.linspace(0, math.pi, 9), indexing="ij"
    )
    ax.plot_wireframe(
        (u.cos() * v.sin()).numpy(),
        (u.sin() * v.sin()).numpy(),
        v.cos().numpy(),
        color="0.85",
        lw=0.4,
    )
    z1, z2 = run.z1[frame].numpy(), run.z2[frame].numpy()  # (N, 3) each
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    pairs = Line3DCollection(list(zip(z1, z2)), colors="tab:gray", linewidths=1.2, label="pairs")
    ax.add_collection3d(pairs)
    ax.scatter(*z1.T, color="tab:blue", s=18, depthshade=False, label="view 1")
    ax.scatter(*z2.T, color="tab:orange", s=18, depthshade=False, label="view 2")
    ax.set(
        xlim=(-1, 1),
        ylim=(-1, 1),
        zlim=(-1, 1),
        xlabel="x",
        ylabel="y",
        zlabel="z",
        xticks=[-1, 0, 1],
        yticks=[-1, 0, 1],
        zticks=[-1, 0, 1],
    )
    ax.set_box_aspect((1, 1, 1))
    name = SPHERE_LOSSES[run.name]
    ax.set_title(f"{name}, τ = {run.tau:.3g}, step {int(run.steps[frame])}")


def render_sphere(runs: Mapping[str, SphereRun], *, frame: int = -1) -> Figure:
    """Free embeddings on S^2 under each loss at one frame, and their alignment and uniformity.

    Args:
        runs: :class:`SphereRun` objects by label (usually ``{"infonce": ..., "dcl": ...}``),
            with the same frames.
        frame: which frame to draw (``-1``: the last).

    Returns:
        A Figure with one 3-D Axes per run (the sphere as a wireframe, one scatter per view,
        a ``Line3DCollection`` joining each pair) and a last Axes with the alignment (7.1,
        solid) and uniformity (7.2, dashed) of every run over the steps, a dotted line at the
        frame drawn.

    Example:
        >>> fig = render_sphere({"dcl": optimise_on_sphere(4, steps=4, frames=2)})
        >>> len(fig.axes), fig.axes[0].name
        (2, '3d')

    Taught in notebook 07.
    """
    if not runs:
        raise ValueError("runs must hold at least one SphereRun")
    count = min(len(run.steps) for run in runs.values())
    if not -count <= frame < count:
        raise ValueError(f"frame must be in [-{count}, {count - 1}] for these runs, got {frame}")
    fig = Figure(figsize=(4.2 * len(runs) + 4.4, 4.2), layout="constrained")
    for k, run in enumerate(runs.values()):
        _sphere_axes(fig.add_subplot(1, len(runs) + 1, k + 1, projection="3d"), run, frame)
    fig.axes[0].legend(loc="upper left", fontsize=8)
    ax = fig.add_subplot(1, len(runs) + 1, len(runs) + 1)
    for run, color in zip(runs.values(), ("tab:red", "tab:green", "tab:purple")):
        align, unif = run_measures(run)
        ax.plot(run.steps, align, color=color, label=f"{SPHERE_LOSSES[run.name]} alignment")
        ax.plot(
            run.steps, unif, color=color, ls="--", label=f"{SPHERE_LOSSES[run.name]} uniformity"
        )
    first = next(iter(runs.values()))
    ax.axvline(int(first.steps[frame]), color="0.4", ls=":", lw=1)
    ax.set(
        xlabel="gradient step",
        ylabel="alignment (α = 2) / uniformity (t = 2)",
        title=f"N = {first.z1.shape[1]} pairs: lower is better for both",
    )
    ax.legend(fontsize=8)
    return fig


def compare_on_sphere(n: int, *, tau: float, steps: int = 300, seed: int = 0) -> dict:
    """InfoNCE and DCL runs of :func:`optimise_on_sphere` from the same start.

    Cached: calls with the same arguments share one dict of runs (do not modify it).

    Example:
        >>> sorted(compare_on_sphere(3, tau=0.5, steps=3))
        ['dcl', 'infonce']

    Taught in notebook 07.
    """
    return _compare(n, float(tau), steps, seed)


@functools.lru_cache(maxsize=32)
def _compare(n: int, tau: float, steps: int, seed: int) -> dict:
    return {
        k: optimise_on_sphere(n, loss=k, tau=tau, steps=steps, seed=seed) for k in SPHERE_LOSSES
    }


def explore_sphere(*, steps: int = 300, seed: int = 0):
    """Sliders "tau", "pairs N" and "frame" over :func:`render_sphere` of :func:`compare_on_sphere`.

    The optimiser (under a second) runs only when tau or N change; frames redraw cached runs.

    Returns:
        An ``ipywidgets.interactive``; its output area shows the figure as a PNG image.

    Taught in notebook 07.
    """
    import ipywidgets as widgets
    from IPython.display import Image, display

    style = {"description_width": "6em"}
    last = len(_frame_steps(steps, 31)) - 1  # index of the last frame (31 frames by default)
    controls = {
        "tau": widgets.FloatLogSlider(
            value=0.1,
            base=10,
            min=-1.3,
            max=0,
            step=0.1,
            description="tau",
            continuous_update=False,
            style=style,
        ),
        "n": widgets.SelectionSlider(
            options=[2, 4, 6, 8, 16, 32, 64],
            value=8,
            description="pairs N",
            continuous_update=False,
            style=style,
        ),
        "frame": widgets.IntSlider(
            value=last, min=0, max=last, description="frame", continuous_update=False, style=style
        ),
    }

    def redraw(tau: float, n: int, frame: int) -> bytes:
        runs = compare_on_sphere(n, tau=round(tau, 4), steps=steps, seed=seed)
        png = figure_png(render_sphere(runs, frame=frame))
        display(Image(data=png, format="png"))
        return png

    return widgets.interactive(redraw, **controls)
