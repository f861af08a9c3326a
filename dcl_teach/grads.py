r"""The coupling factor q_B and the closed-form gradients of InfoNCE, DCL and DCLW.

For anchor ``a`` (row ``a`` of ``z = cat([z1, z2])``) with positive ``pos(a)``, let
``U_a = sum_{j != a, pos(a)} exp(s[a, j])`` be the sum over its 2N - 2 negatives (Eq. 2 of Yeh
et al.) and ``pn[a, j] = exp(s[a, j]) / U_a`` the softmax over the negatives alone. Every loss of
the course gives the same three gradient terms (Proposition 1 and Eq. 3 of Yeh et al. for
InfoNCE):

    dL_a/dz_a      = -(alpha_a / tau) z_pos(a) + (beta_a / tau) sum_j pn[a, j] z_j   (anchor)
    dL_a/dz_pos(a) = -(alpha_a / tau) z_a                                          (positive)
    dL_a/dz_j      =  (beta_a / tau) pn[a, j] z_a                                  (negative j)

with ``(alpha, beta) = (q, q)`` for InfoNCE, ``(1, 1)`` for DCL and ``(w, 1)`` for DCLW. InfoNCE
carries the coupling factor ``q_a = U_a / (exp(s[a, pos(a)]) + U_a)`` (Eq. 4) on every term; DCL
is the same gradient with that factor removed. The functions here take embeddings that are
already on the unit sphere (the losses with ``normalize=False``) and return the gradient of the
mean over the 2N anchors. These are gradients with respect to the unit rows: an encoder whose
outputs the loss normalises feels only their tangential part (:func:`project_tangent`).
"""

from __future__ import annotations

import torch

from dcl_teach.inputs import check_embeddings, check_positive
from dcl_teach.losses import vmf_weights_from_cosines
from dcl_teach.masks import negative_mask, positive_index


def _similarities(
    z1: torch.Tensor, z2: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    # Works on one batch (N, D) or a stack of batches (B, N, D): every index is on the last axes.
    n = z1.shape[-2]
    z = torch.cat([z1, z2], dim=-2)  # (..., 2N, D)
    s = z @ z.transpose(-1, -2) / tau  # (..., 2N, 2N)
    pos = positive_index(n, device=z.device)  # (2N,)
    s_pos = s[..., torch.arange(2 * n, device=z.device), pos]  # (..., 2N)
    s_neg = s.masked_fill(~negative_mask(n, device=z.device), float("-inf"))  # (..., 2N, 2N)
    return z, pos, s_pos, s_neg


def coupling(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    r"""The coupling factor q_B of every anchor, Eq. (2.4) of the course; Eq. (4) of Yeh et al. (2021).

    .. math:: q_a = 1 - \frac{e^{s_{a,\mathrm{pos}(a)}}}{e^{s_{a,\mathrm{pos}(a)}} + U_a}
              = \frac{U_a}{e^{s_{a,\mathrm{pos}(a)}} + U_a}

    One minus the softmax weight of the positive in the InfoNCE denominator. It multiplies
    every term of the InfoNCE gradient; near 0 (an easy positive, or only easy negatives) the
    anchor stops learning.

    Args:
        z1: (N, D) first view.
        z2: (N, D) second view.
        tau: temperature, > 0.
        normalize: L2-normalise the rows first.

    Returns:
        (2N,) values in (0, 1), anchors in the order of ``cat([z1, z2])``.

    Example:
        >>> z = torch.ones(3, 2)  # positive and 4 negatives all alike: q = 4/5
        >>> coupling(z, z).tolist()
        [0.8..., 0.8..., 0.8..., 0.8..., 0.8..., 0.8...]

    Taught in notebook 02.
    """
    tau = check_positive("tau", tau)
    check_embeddings(z1, z2, min_pairs=2, loss="q_B")
    if normalize:
        z1, z2 = torch.nn.functional.normalize(z1, dim=1), torch.nn.functional.normalize(z2, dim=1)
    with torch.no_grad():
        dtype = torch.float64 if z1.dtype == torch.float64 else torch.float32
        _, _, s_pos, s_neg = _similarities(z1.to(dtype), z2.to(dtype), tau)
        log_u = s_neg.logsumexp(dim=1)  # (2N,) log U_a
        return torch.sigmoid(log_u - s_pos)  # (2N,) U / (e^pos + U)


def _grad(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float, alpha: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    n = z1.shape[0]
    z, pos, _, s_neg = _similarities(z1, z2, tau)
    pn = torch.softmax(s_neg, dim=1)  # (2N, 2N) pn[a, j], zero off the negatives
    # Per-anchor gradient coefficients on the similarity matrix: dL_a/ds[a, j].
    c = beta[:, None] * pn  # (2N, 2N) negatives
    c[torch.arange(2 * n), pos] -= alpha  # (2N, 2N) positive
    # s[a, j] = <z_a, z_j> / tau touches both z_a (row) and z_j (column).
    g = (c @ z + c.t() @ z) / (tau * 2 * n)  # (2N, D) mean over the 2N anchors
    return g[:n], g[n:]


def _check(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    tau = check_positive("tau", tau)
    check_embeddings(z1, z2, min_pairs=2, loss="the gradient")
    return tau


def info_nce_grad(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Closed-form InfoNCE gradient, Eqs. (2.5)-(2.7) of the course; Eq. (3) of Yeh et al. (2021).

    Every term carries the coupling factor q_B (Proposition 1 of the paper):
    ``alpha = beta = q`` in the module docstring.

    Args:
        z1: (N, D) first view, unit rows.
        z2: (N, D) second view, unit rows.
        tau: temperature, > 0.

    Returns:
        ``(dL/dz1, dL/dz2)``, each (N, D): the gradient of ``info_nce(z1, z2, normalize=False)``.

    Example:
        >>> import torch.nn.functional as F
        >>> from dcl_teach.losses import info_nce
        >>> z1 = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1).requires_grad_()
        >>> z2 = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1).requires_grad_()
        >>> auto = torch.autograd.grad(info_nce(z1, z2, tau=0.5, normalize=False), (z1, z2))
        >>> mine = info_nce_grad(z1.detach(), z2.detach(), tau=0.5)
        >>> all(torch.allclose(a, b) for a, b in zip(auto, mine))
        True

    Taught in notebook 02.
    """
    tau = _check(z1, z2, tau)
    q = coupling(z1, z2, tau=tau, normalize=False).to(z1.dtype)  # (2N,)
    return _grad(z1, z2, tau=tau, alpha=q, beta=q)


def dcl_grad(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Closed-form DCL gradient, Eq. (4.2) of the course: the InfoNCE gradient without q_B.

    Args:
        z1, z2, tau: as in :func:`info_nce_grad`.

    Returns:
        ``(dL/dz1, dL/dz2)`` of ``dcl(z1, z2, normalize=False)``.

    Example:
        >>> z1, z2 = torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        >>> g1, g2 = dcl_grad(z1, z2, tau=1.0)
        >>> tuple(g1.shape)
        (3, 3)

    Taught in notebook 04.
    """
    tau = _check(z1, z2, tau)
    ones = torch.ones(2 * z1.shape[0], dtype=z1.dtype, device=z1.device)  # (2N,)
    return _grad(z1, z2, tau=tau, alpha=ones, beta=ones)


def project_tangent(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""The part of each row of ``g`` tangent to the sphere at the matching unit row of ``z``.

    .. math:: g_\perp = (I - z z^\top)\, g = g - \langle g, z \rangle\, z

    When the loss normalises the encoder's output ``r`` (``z = r / |r|``), the gradient that
    reaches ``r`` is ``project_tangent(g, z) / |r|``: the radial part of ``g`` (along ``z``)
    only changes the length of ``r``, which the normalisation throws away.

    Args:
        g: (..., D) gradients with respect to the unit rows.
        z: (..., D) the unit rows, same shape.

    Returns:
        (..., D) the tangential part of ``g``, orthogonal to ``z`` row by row.

    Raises:
        ValueError: for shapes that differ.

    Example:
        >>> z = torch.tensor([[1.0, 0.0]])
        >>> project_tangent(torch.tensor([[3.0, 4.0]]), z).tolist()  # the radial 3 goes
        [[0.0, 4.0]]

    Taught in notebook 02.
    """
    if g.shape != z.shape:
        raise ValueError(
            f"g and z must have the same shape, got {tuple(g.shape)} and {tuple(z.shape)}"
        )
    return g - (g * z).sum(dim=-1, keepdim=True) * z  # (..., D)


def anchor_gradient(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""q_B and the anchor term of DCL's gradient for every anchor, Eqs. (2.4), (2.5) and (4.2).

    .. math:: \frac{\partial L^{\mathrm{DCL}}_a}{\partial z_a}
              = \frac{1}{\tau}\Big(-z_{\mathrm{pos}(a)} + \sum_{j} p^-_{a,j} z_j\Big),
              \qquad \frac{\partial L^{\mathrm{InfoNCE}}_a}{\partial z_a}
              = q_a \frac{\partial L^{\mathrm{DCL}}_a}{\partial z_a}

    the gradient of anchor ``a``'s own loss with respect to the (unit) anchor embedding.
    Proposition 1 of Yeh et al. (2021): InfoNCE's anchor term is q_a times it.

    Args:
        z1: (N, D) or (B, N, D) first view, unit rows.
        z2: same shape, second view, unit rows.
        tau: temperature, > 0.

    Returns:
        ``(q, g)``: (..., 2N) coupling factors and (..., 2N, D) anchor terms, anchors in the
        order of ``cat([z1, z2], dim=-2)``, in the dtype of the input.

    Raises:
        ValueError: for N < 2, mismatched shapes or tau <= 0.

    Example:
        >>> z = torch.ones(3, 2) / 2**0.5  # everything alike: q = 4/5, and nothing to pull
        >>> q, g = anchor_gradient(z, z, tau=0.1)
        >>> round(q[0].item(), 4), round(g[0].norm().item(), 4)
        (0.8, 0.0)

    Taught in notebook 03.
    """
    tau = check_positive("tau", tau)
    if z1.shape != z2.shape or z1.dim() not in (2, 3) or z1.shape[-2] < 2:
        raise ValueError(
            f"z1 and z2 must both be (N, D) or (B, N, D) with N >= 2, got {tuple(z1.shape)} "
            f"and {tuple(z2.shape)}"
        )
    z, pos, s_pos, s_neg = _similarities(z1, z2, tau)
    q = torch.sigmoid(s_neg.logsumexp(dim=-1) - s_pos)  # (..., 2N) U / (e^pos + U), Eq. (2.4)
    pn = torch.softmax(s_neg, dim=-1)  # (..., 2N, 2N) softmax over the negatives alone
    g = (pn @ z - z[..., pos, :]) / tau  # (..., 2N, D) Eq. (2.5) without q_a
    return q, g


def vmf_weights(z1: torch.Tensor, z2: torch.Tensor, *, sigma: float = 0.5) -> torch.Tensor:
    r"""DCLW weights of the N pairs, Eq. (5.1) of the course.

    .. math:: w_i = 2 - \frac{e^{c_i/\sigma}}{\frac{1}{N}\sum_k e^{c_k/\sigma}},
              \quad c_i = \langle z^{(1)}_i, z^{(2)}_i \rangle \text{ (cosine)}

    Args:
        z1: (N, D) first view (normalised here).
        z2: (N, D) second view.
        sigma: width, > 0.

    Returns:
        (N,) detached weights, mean exactly 1.

    Example:
        >>> z1 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # pair 0 aligned, pair 1 orthogonal
        >>> [round(w, 3) for w in vmf_weights(z1, z2).tolist()]
        [0.238, 1.762]

    Taught in notebook 05.
    """
    sigma = check_positive("sigma", sigma)
    check_embeddings(z1, z2, min_pairs=1, loss="DCLW weighting")
    with torch.no_grad():
        c = torch.nn.functional.normalize(z1, dim=1) * torch.nn.functional.normalize(z2, dim=1)
        return vmf_weights_from_cosines(c.sum(dim=1), sigma=sigma)  # (N,)


def dclw_grad(
    z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.1, sigma: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Closed-form DCLW gradient with detached weights, Eq. (5.3) of the course.

    The DCL gradient with each positive term scaled by its pair's weight ``w_i``.

    Args:
        z1, z2, tau: as in :func:`info_nce_grad`.
        sigma: width of the weighting, > 0.

    Returns:
        ``(dL/dz1, dL/dz2)`` of ``dclw(z1, z2, normalize=False)``.

    Example:
        >>> z1, z2 = torch.eye(3, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
        >>> g_w, g_d = dclw_grad(z1, z2, tau=1.0), dcl_grad(z1, z2, tau=1.0)
        >>> torch.allclose(g_w[0], g_d[0])  # all pairs alike: every weight is 1
        True

    Taught in notebook 05.
    """
    tau = _check(z1, z2, tau)
    w = vmf_weights(z1, z2, sigma=sigma).to(z1.dtype)  # (N,)
    ones = torch.ones(2 * z1.shape[0], dtype=z1.dtype, device=z1.device)  # (2N,)
    return _grad(z1, z2, tau=tau, alpha=torch.cat([w, w]), beta=ones)
