r"""InfoNCE, DCL and DCLW: the contrastive losses of the course.

Notation (the same in every notebook; the paper's symbols on the right):

==========  ====================================================  =================================
symbol      meaning                                               Yeh et al. (2021)
==========  ====================================================  =================================
``z1, z2``  the two views' embeddings, (N, D)                     :math:`z_i^{(1)}, z_i^{(2)}`
``z``       both views stacked, ``cat([z1, z2])``, (2N, D)
``s``       similarities ``z z^T / tau``, (2N, 2N)                :math:`\langle z_i, z_j\rangle/\tau`
``tau``     temperature                                           :math:`\tau`
``p``       softmax weight of an entry in a row's denominator
``q``       coupling factor, 1 - p of the positive                :math:`q_B` (Eq. 4)
``w``       DCLW weight of a positive pair                        :math:`w(z_i^{(1)}, z_i^{(2)})`
``sigma``   width of the DCLW weighting                           :math:`\sigma`
``pos(a)``  index of anchor ``a``'s positive (its other view)
==========  ====================================================  =================================

Each of the 2N anchors has one positive (the other view of the same image) and 2N - 2
negatives (both views of every other image). The losses are averaged over all 2N anchors (the
paper sums; ``reduction="sum"`` gives that). Embeddings are L2-normalised inside the loss unless
``normalize=False``. All three go through :func:`dcl_teach.contrastive.contrastive` to the fused
kernels (:mod:`dcl_teach.symmetric` in one process, :mod:`dcl_teach.fused` across ranks or with
a queue): the statistics are computed in float32 (float64 inputs stay float64), blockwise, with
the analytic gradient.

Extra negatives (``negatives=``, a (K, D) tensor such as a MoCo memory queue,
:class:`dcl_teach.queue.MemoryQueue`) join every anchor's denominator: K more columns of the
similarity matrix, with no positive among them, normalised like the embeddings and treated as
constants (detached: no gradient ever reaches them). Taught in notebook 08.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dcl_teach.contrastive import (  # noqa: F401  re-exported: importable from here too
    IMPLEMENTATIONS,
    REDUCTIONS,
    contrastive,
    vmf_weights_from_cosines,
)
from dcl_teach.inputs import (  # noqa: F401  the checks the losses run, importable from here
    check_embeddings,
    check_negatives,
    check_positive,
    normalize_rows,
)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    block_size: int | None = None,
    impl: str = "fused",
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""InfoNCE (NT-Xent, the SimCLR loss), Eq. (1.3) of the course; Eqs. (1)-(2) of Yeh et al. (2021).

    .. math::
        L_a = -s_{a,\mathrm{pos}(a)} + \log\Big(e^{s_{a,\mathrm{pos}(a)}} + \sum_{j \ne a, \mathrm{pos}(a)} e^{s_{a,j}} + \sum_{k=1}^{K} e^{\langle z_a, n_k\rangle/\tau}\Big)

    The positive sits in the denominator beside the 2N - 2 negatives of the batch and the K
    extra ``negatives`` ``n_k`` (none by default).

    Args:
        z1: (N, D) embeddings of the first view (``z^{(1)}``).
        z2: (N, D) embeddings of the second view (``z^{(2)}``); row i is the positive of row i.
        tau: temperature, > 0.
        normalize: L2-normalise the rows first (turn off for embeddings already on the sphere).
        reduction: ``"mean"`` over the 2N anchors, ``"sum"`` (the paper), or ``"none"`` for the
            (2N,) per-anchor losses in the order of ``cat([z1, z2])`` (full-matrix path).
        gather_distributed: take negatives from every rank of ``torch.distributed``. The value
            returned on each rank is the loss of the global batch; the gradient is this rank's
            share, so DistributedDataParallel's averaging yields the full-batch gradient.
        block_size: anchors per block of the fused kernel (memory ~ block x 2N).
        impl: ``"fused"`` (blockwise, analytic gradient) or ``"dense"`` (full matrix, autograd).
        negatives: (K, D) extra negatives shared by every anchor, e.g. a memory queue of past
            embeddings (MoCo; :class:`dcl_teach.queue.MemoryQueue`), K >= 0, same dtype and
            device as ``z1``. Normalised like the embeddings (when ``normalize``). They are
            constants: the loss detaches them, silently, so no gradient ever reaches them, even
            if they require grad. ``None`` (default): the batch only, on the symmetric kernel,
            exactly as without this argument. With extra negatives the fused path is the
            rows-vs-candidates kernel; with ``gather_distributed`` each rank's anchors see its
            own ``negatives``.

    Returns:
        0-dim float32 tensor (float64 for float64 inputs), or (2N,) with ``reduction="none"``.

    Raises:
        TypeError: non-tensor input, integer dtype, z1 and z2 of different dtypes (no silent
            promotion), non-numeric tau, tensors inside ``torch.func`` transforms (``vmap``).
        ValueError: shapes, N < 1, tau <= 0, non-finite or all-zero embeddings, meta tensors,
            ``block_size`` not a positive int; ``negatives`` not 2-D, with another D or on
            another device, with non-finite (or, when normalising, all-zero) rows. A
            ``negatives`` of another dtype than ``z1`` is a TypeError.

    Example:
        >>> import math
        >>> z = torch.ones(4, 3)
        >>> round(info_nce(z, z).item(), 4), round(math.log(2 * 4 - 1), 4)
        (1.9459, 1.9459)
        >>> queue = torch.ones(5, 3)  # 5 extra negatives, all alike: log(2N - 1 + K)
        >>> round(info_nce(z, z, negatives=queue).item(), 4), round(math.log(2 * 4 - 1 + 5), 4)
        (2.4849, 2.4849)

    Taught in notebook 01.
    """
    return contrastive(
        z1,
        z2,
        tau=tau,
        decoupled=False,
        sigma=None,
        normalize=normalize,
        reduction=reduction,
        gather_distributed=gather_distributed,
        block_size=block_size,
        impl=impl,
        name="InfoNCE",
        negatives=negatives,
    )


def dcl(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    block_size: int | None = None,
    impl: str = "fused",
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Decoupled contrastive loss (DCL), Eq. (4.1) of the course; the DCL loss of Yeh et al. (2021).

    .. math::
        L_a = -s_{a,\mathrm{pos}(a)} + \log \Big(\sum_{j \ne a, \mathrm{pos}(a)} e^{s_{a,j}} + \sum_{k=1}^{K} e^{\langle z_a, n_k\rangle/\tau}\Big)

    The positive is removed from the denominator, which removes the coupling factor q_B from
    the gradient. The ratio inside the log can exceed 1, so the loss can be negative: that is
    expected, not a bug. The K extra ``negatives`` ``n_k`` (none by default) join the sum.

    Args:
        z1, z2, tau, normalize, reduction, gather_distributed, block_size, impl, negatives: as
            in :func:`info_nce` (extra negatives are detached constants).

    Returns:
        0-dim tensor, or (2N,) with ``reduction="none"``.

    Raises:
        TypeError, ValueError: as :func:`info_nce`, and N < 2 (an anchor would have no negative).

    Example:
        >>> import math
        >>> z = torch.ones(4, 3)
        >>> round(dcl(z, z, tau=1.0).item(), 4), round(math.log(2 * 4 - 2), 4)
        (1.7918, 1.7918)
        >>> round(dcl(z, z, negatives=torch.ones(5, 3)).item(), 4), round(math.log(2 * 4 - 2 + 5), 4)
        (2.3979, 2.3979)

    Taught in notebook 04.
    """
    return contrastive(
        z1,
        z2,
        tau=tau,
        decoupled=True,
        sigma=None,
        normalize=normalize,
        reduction=reduction,
        gather_distributed=gather_distributed,
        block_size=block_size,
        impl=impl,
        name="DCL",
        negatives=negatives,
    )


def dclw(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    tau: float = 0.1,
    sigma: float = 0.5,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    block_size: int | None = None,
    impl: str = "fused",
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Weighted DCL (DCLW), Eq. (5.2) of the course; the DCLW loss of Yeh et al. (2021).

    .. math::
        L_a = -w_i\, s_{a,\mathrm{pos}(a)} + \log \sum_{j \ne a, \mathrm{pos}(a)} e^{s_{a,j}}, \qquad
        w_i = 2 - \frac{e^{c_i/\sigma}}{\frac{1}{N}\sum_k e^{c_k/\sigma}}

    with ``c_i = <z1_i, z2_i>`` the cosine similarity of pair i (not divided by tau), a negative
    von Mises-Fisher weighting: pairs that are less similar than average (hard positives) pull
    harder. The weights average to 1 over the batch and can go negative for outlier pairs.

    The weights are computed over the whole batch (all ranks when gathered) and **detached**:
    they scale each positive's pull but are not themselves optimised. The paper leaves this
    open; detaching keeps the gradient the plain DCL gradient with a re-weighted positive
    term (Eq. 5.3 of the course), avoids a second path through which the model could lower the
    loss by making every pair equally similar, and matches lightly. Notebook 05 shows the
    difference.

    With extra ``negatives`` the sum in the log gains their K terms, as in :func:`dcl`; the
    weights still come from the batch's positive pairs only.

    Args:
        z1, z2, tau, normalize, reduction, gather_distributed, block_size, impl, negatives: as
            in :func:`info_nce` (extra negatives are detached constants).
        sigma: width of the weighting, > 0.

    Returns:
        0-dim tensor, or (2N,) with ``reduction="none"``.

    Raises:
        TypeError, ValueError: as :func:`dcl`, and sigma <= 0.

    Example:
        >>> import math
        >>> z = torch.ones(4, 3)  # all pairs alike: every weight is 1 and DCLW equals DCL
        >>> bool(torch.isclose(dclw(z, z), dcl(z, z)))
        True

    Taught in notebook 05.
    """
    return contrastive(
        z1,
        z2,
        tau=tau,
        decoupled=True,
        sigma=sigma,
        normalize=normalize,
        reduction=reduction,
        gather_distributed=gather_distributed,
        block_size=block_size,
        impl=impl,
        name="DCLW",
        negatives=negatives,
    )


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"infonce": info_nce, "dcl": dcl, "dclw": dclw}


class InfoNCELoss(nn.Module):
    """:func:`info_nce` as a module; it only holds the hyperparameters.

    ``forward(z1, z2, negatives=None)``: the extra negatives (a memory queue) are passed per
    call, as to :func:`info_nce`; so are they for :class:`DCLLoss` and :class:`DCLWLoss`.

    Example:
        >>> loss = InfoNCELoss(tau=0.2)
        >>> loss(torch.ones(2, 3), torch.ones(2, 3)).shape
        torch.Size([])

    Taught in notebook 06.
    """

    def __init__(self, tau: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.gather_distributed = gather_distributed

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return info_nce(
            z1, z2, tau=self.tau, gather_distributed=self.gather_distributed, negatives=negatives
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, gather_distributed={self.gather_distributed}"


class DCLLoss(InfoNCELoss):
    """:func:`dcl` as a module; it only holds the hyperparameters.

    Taught in notebook 06.
    """

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dcl(
            z1, z2, tau=self.tau, gather_distributed=self.gather_distributed, negatives=negatives
        )


class DCLWLoss(nn.Module):
    """:func:`dclw` as a module; it only holds the hyperparameters.

    Taught in notebook 06.
    """

    def __init__(self, tau: float = 0.1, sigma: float = 0.5, gather_distributed: bool = False):
        super().__init__()
        self.tau = check_positive("tau", tau)
        self.sigma = check_positive("sigma", sigma)
        self.gather_distributed = gather_distributed

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dclw(
            z1,
            z2,
            tau=self.tau,
            sigma=self.sigma,
            gather_distributed=self.gather_distributed,
            negatives=negatives,
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau}, sigma={self.sigma}, gather_distributed={self.gather_distributed}"
