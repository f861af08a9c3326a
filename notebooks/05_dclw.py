# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown] slideshow={"slide_type": "skip"} tags=["colab-badge"]
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dcl-teach/dcl-teach/blob/v0.1.0/notebooks/05_dclw.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/dcl-teach/dcl-teach/v0.1.0?urlpath=lab/tree/notebooks/05_dclw.ipynb)

# %% [markdown] slideshow={"slide_type": "slide"}
# # 05 · Weighted DCL (DCLW)
#
# DCL (notebook 04) treats every positive pair alike: each one pulls its two views together
# with the same strength, $1/\tau$. (That is the gradient *before the projection* onto the
# sphere: an encoder whose output is normalised feels only its tangential part, so a pair at
# cosine $c$ pulls with $\sqrt{1 - c^2}/\tau$, and nearly aligned pairs already pull less; see
# notebook 04, section 3.) Yet the pairs of a batch are far from alike. Some views are
# already almost identical; others were changed so much by the augmentations that the encoder
# still maps them far apart. Yeh et al. (2021) add a weight to the positive term that makes the
# *hard* pairs, the ones that are far apart, pull harder, and the easy ones pull less. They call
# it a negative von Mises-Fisher weighting, and the weighted loss DCLW.
#
# **In this notebook you will**
#
# 1. compute the weight $w_i$ (5.1) from the cosine of each positive pair, and see why the
#    weights of a batch always average to exactly 1;
# 2. explore what the width $\sigma$ does, with a slider;
# 3. meet weights below zero: what makes them, and what they do to a pair;
# 4. write the DCLW loss (5.2) and check its gradient (5.3) with the weights held fixed;
# 5. compare with weights that are *not* detached: derive the extra gradient term (5.4),
#    verify it with autograd and measure how large it is.

# %% slideshow={"slide_type": "skip"} tags=["colab-install"]
# On Google Colab only: install this course's package at the version of this notebook.
import sys

if "google.colab" in sys.modules:
    import subprocess

    spec = "dcl-teach @ git+https://github.com/dcl-teach/dcl-teach@v0.1.0"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

# %% slideshow={"slide_type": "skip"}
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import dcl_teach
from dcl_teach.exercises import check
from dcl_teach.grads import dcl_grad, dclw_grad, vmf_weights
from dcl_teach.losses import dcl, dclw, vmf_weights_from_cosines
from dcl_teach.synthetic import default_cosines, views_with_cosines
from dcl_teach.widgets import explore_vmf_weights, render_vmf_weights

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
torch.manual_seed(0)  # every random tensor below also takes its own seeded generator
device = torch.device("cpu")  # everything here is small: a CPU is plenty, and prints stay exact
print(f"dcl_teach {dcl_teach.__version__} on {device}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. A weight for each positive pair
#
# Write $c_i = \langle z^{(1)}_i, z^{(2)}_i \rangle$ for the cosine of pair $i$ (unit embeddings;
# note that $c_i$ is *not* divided by $\tau$). The function $e^{c/\sigma}$ is, up to a constant,
# the density of a von Mises-Fisher distribution on the sphere, the sphere's analogue of a
# Gaussian, with concentration $1/\sigma$: large for pairs that are well aligned, small for
# pairs that are not. Divide it by its average over the batch and subtract the result from 2:
#
# $$w_i = 2 - \frac{e^{c_i/\sigma}}{\frac{1}{N}\sum_{k=1}^{N} e^{c_k/\sigma}}. \tag{5.1}$$
#
# Three properties follow at once. The fraction averages to exactly 1 over the batch (its
# numerators sum to $N$ times its denominator), so **the weights average to exactly 1**: DCLW
# does not change the total pull of the batch, it only redistributes it. The fraction is
# positive, so $w_i < 2$. And $w_i$ falls as $c_i$ grows: pairs less aligned than the batch
# typically is get $w_i > 1$ and pull harder, well-aligned pairs get $w_i < 1$.
#
# Here are 64 pairs whose cosines are spread between 0.2 and 0.95, and (5.1) written exactly as
# it reads:

# %%
def vmf_naive(c: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """Eq. (5.1) as written: w_i = 2 - exp(c_i / sigma) / mean_k exp(c_k / sigma); c is (N,)."""
    e = torch.exp(c / sigma)  # (N,)
    return 2 - e / e.mean()  # (N,)


c = default_cosines(64)  # (N,) cosines of the positive pairs, float64
z1, z2 = views_with_cosines(c, 32, generator=torch.Generator().manual_seed(0))  # (N, D) each

# %% tags=["nbval-check-output"]
w = vmf_naive(c, sigma=0.5)  # (N,)
assert torch.allclose(w, vmf_weights(z1, z2, sigma=0.5), atol=1e-12)  # the package, from z
assert math.isclose(w.mean().item(), 1.0, rel_tol=1e-12) and w.max() < 2
print(
    f"w in [{w.min():.3f}, {w.max():.3f}], mean {w.mean():.6f}; pair with c = {c.min():.3f} gets the most"
)

# %% [markdown]
# Formula (5.1) as written has a trap. The largest float32 number is about $3.4 \times 10^{38}$,
# so in float32 $e^{x}$ is `inf` as soon as $x$ exceeds $\log(3.4 \times 10^{38}) \approx 88.72$;
# and `inf / inf` is `NaN`. A small $\sigma$ makes $c/\sigma$ large.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 5.1: where the formula breaks
#
# Without running `vmf_naive`: below which $\sigma$ does it return a `NaN` in float32, for a
# batch with cosines `c`? Write `naive_breaks_below(c)` that returns that $\sigma$ as a float,
# from `c` alone (no exponentials; `torch.finfo(torch.float32).max` is the largest float32).
# Then predict, before running the cell after the check: just below your $\sigma$, how many of
# the 64 weights are `NaN`, and what are the others? And just above it?

# %% exercise="5.1" tags=["exercise"]
def naive_breaks_below(c: torch.Tensor) -> float:
    """The sigma below which Eq. (5.1), computed naively in float32, gives a NaN; c is (N,)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="5.1" tags=["check"]
FLOAT32_LOG_MAX = math.log(torch.finfo(torch.float32).max)  # about 88.72
verdict = check(
    "5.1", naive_breaks_below, c.float(), expected=c.float().max() / FLOAT32_LOG_MAX, rtol=1e-3
)
breaks_fn = naive_breaks_below if verdict.ok else (lambda c: float(c.max()) / FLOAT32_LOG_MAX)


# %% exercise="5.1" jupyter={"source_hidden": true} tags=["solution"]
def naive_breaks_below(c: torch.Tensor) -> float:  # noqa: F811
    """The sigma below which Eq. (5.1), computed naively in float32, gives a NaN; c is (N,)."""
    # The largest exponent is max(c) / sigma; e^x overflows once x > log(float32 max). Then the
    # mean is inf too: that pair gets inf / inf = NaN, and every finite pair 2 - finite / inf = 2.
    return float(c.max()) / math.log(torch.finfo(torch.float32).max)


# %% [markdown]
# Now the test of your prediction, with the threshold we carry on with: the naive formula 1 %
# above and 1 % below it.

# %% tags=["nbval-check-output"]
sigma_star = breaks_fn(c.float())
above = vmf_naive(c.float(), sigma=1.01 * sigma_star)  # (N,)
below = vmf_naive(c.float(), sigma=0.99 * sigma_star)  # (N,)
assert above.isfinite().all() and below.isnan().any()
assert (below[below.isfinite()] == 2).all()  # finite / inf = 0: every other weight becomes 2
print(f"threshold sigma = {sigma_star:.5f}; 1 % above: all 64 weights finite")
print(
    f"1 % below: {int(below.isnan().sum())} NaN (the pairs whose c / sigma overflows), "
    f"the other {int(below.isfinite().sum())} all equal to 2"
)

# %% [markdown]
# The package never forms $e^{c_i/\sigma}$. Since
# $e^{c_i/\sigma} / \frac{1}{N}\sum_k e^{c_k/\sigma} = N \operatorname{softmax}(c/\sigma)_i$, it
# computes $w = 2 - N \operatorname{softmax}(c / \sigma)$, and the softmax subtracts the
# largest entry before exponentiating. At $\sigma = 0.01$, well below the threshold:

# %% tags=["nbval-check-output"]
naive32 = vmf_naive(c.float(), sigma=0.01)  # (N,)
package32 = vmf_weights_from_cosines(c.float(), sigma=0.01)  # (N,)
assert naive32.isnan().any() and package32.isfinite().all()
assert torch.allclose(package32, vmf_weights(z1.float(), z2.float(), sigma=0.01), atol=1e-4)
print(
    f"naive: {int(naive32.isnan().sum())} of 64 weights are NaN; package: all finite, mean {package32.mean():.4f}"
)

# %% [markdown]
# The softmax form also makes the mean of 1 easy to test on many batches at once: each row of
# a softmax sums to 1, so $N \operatorname{softmax}$ averages to 1 in every batch, whatever the
# cosines and $\sigma$:

# %% tags=["nbval-check-output"]
g_wild = torch.Generator().manual_seed(4)
wild = 2 * torch.rand(1000, 64, generator=g_wild, dtype=torch.float64) - 1  # (B, N) any cosines
worst = max(
    (2 - 64 * torch.softmax(wild / s, dim=1)).mean(dim=1).sub(1).abs().max().item()
    for s in (0.05, 0.5, 5.0)
)  # (B, N) weights of every batch, then the worst |mean - 1|
assert worst < 1e-12
print("1,000 random batches of 64 pairs, sigma in (0.05, 0.5, 5): every mean weight is 1")


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. What $\sigma$ does
#
# $\sigma$ sets how strongly the weight reacts to differences in alignment. For large $\sigma$,
# $e^{c/\sigma} \approx 1 + c/\sigma$ and every weight is close to 1: DCLW turns into DCL. For
# small $\sigma$ the softmax concentrates on the best-aligned pairs, which get weights far below
# zero, while all the others approach the ceiling of 2. (How close to DCL is DCLW at a large
# $\sigma$, exactly? Exercise 5.3 works it out.) The table uses the 64 pairs from above.

# %% tags=["nbval-check-output"]
print("sigma   min w   max w   w < 0   mean w")
for sigma in (0.1, 0.2, 0.5, 1.0, 2.0, 10.0):
    w = vmf_weights_from_cosines(c, sigma=sigma)  # (N,)
    assert abs(w.mean().item() - 1) < 1e-9
    print(f"{sigma:5}  {w.min():6.3f}  {w.max():6.3f}  {int((w < 0).sum()):6}  {w.mean():7.4f}")

# %% [markdown]
# Two figures of the same 64 pairs. Each point is one pair; the orange curve is $w$ as a
# function of the cosine for this batch. The dashed line is the mean weight, 1, and the dotted
# one is zero. First $\sigma = 0.5$, the value the public implementations use by default: the
# weights spread around 1 and, in this batch, none is negative.

# %%
assert (vmf_weights_from_cosines(c, sigma=0.5) > 0).all()
render_vmf_weights(sigma=0.5, cosines=c)

# %% [markdown]
# Then $\sigma = 0.2$, a sharper weighting: the best-aligned pairs fall below zero, the rest
# crowd towards 2. Section 3 asks what a negative weight does.

# %%
assert (vmf_weights_from_cosines(c, sigma=0.2) < 0).any()
render_vmf_weights(sigma=0.2, cosines=c)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Move **sigma** and watch the curve bend. Where does the first weight cross zero?

# %% tags=["nbval-ignore-output"]
explore_vmf_weights(c)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Weights below zero
#
# A weight goes negative when one pair's $e^{c_i/\sigma}$ is more than twice the batch average,
# i.e. when a pair is far better aligned than the rest. The cleanest example: 256 pairs, all at
# cosine 0 except a single pair at cosine 1. Then
# $w_1 = 2 - 256\,e^{2} / (255 + e^{2}) \approx -5.2$ at $\sigma = 0.5$.

# %% tags=["nbval-check-output"]
c_outlier = torch.zeros(256, dtype=torch.float64)  # (N,)
c_outlier[0] = 1.0
zo1, zo2 = views_with_cosines(c_outlier, 32, generator=torch.Generator().manual_seed(1))
w_out = vmf_weights(zo1, zo2, sigma=0.5)  # (N,)
closed = 2 - 256 * math.exp(2) / (255 + math.exp(2))
assert math.isclose(w_out[0].item(), closed, rel_tol=1e-12) and (w_out[1:] > 1).all()
print(
    f"outlier pair: w = {w_out[0]:.4f}; the other 255: w = {w_out[1]:.4f}; mean {w_out.mean():.4f}"
)

# %% [markdown]
# What does a negative weight do? The positive term of the loss is $-w_i c_i/\tau$: with
# $w_i < 0$ the loss goes *down* when the pair moves *apart*. Let us watch it happen. Put the
# outlier at cosine 0.9 instead (its weight is then about $-3.9$) and take five plain gradient
# steps on the embeddings, renormalising after each, once with the DCL gradient and once with
# the DCLW gradient:

# %% tags=["nbval-check-output"]
c_out9 = c_outlier.clone()
c_out9[0] = 0.9
zo1, zo2 = views_with_cosines(c_out9, 32, generator=torch.Generator().manual_seed(1))
print(f"weight of the outlier pair: {vmf_weights(zo1, zo2, sigma=0.5)[0]:.3f}")
for name, grad in (
    ("DCL ", dcl_grad),
    ("DCLW", lambda a, b, tau: dclw_grad(a, b, tau=tau, sigma=0.5)),
):
    a, b = zo1.clone(), zo2.clone()
    for _ in range(5):
        g1, g2 = grad(a, b, tau=0.1)
        a, b = F.normalize(a - g1, dim=1), F.normalize(b - g2, dim=1)  # learning rate 1
    print(f"{name}: outlier cosine 0.900 -> {(a[0] @ b[0]).item():.3f}")

# %% [markdown]
# DCL pulls the pair closer, as for every pair; DCLW pushes it apart. Whether that is a feature
# (do not waste effort on a pair that is already aligned far beyond the others) or a flaw
# (a positive pair should never be pushed apart) is a matter of taste; one proposal made for a
# public implementation was to clamp the weights at zero. `dcl_teach` does not clamp, and
# neither do the widely used implementations. In practice, negative weights need a batch with a
# strong outlier or a small $\sigma$; at $\sigma = 0.5$ the batch of section 1 has none.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. The DCLW loss and its gradient
#
# Put the weight on the positive term of (4.1); both anchors of pair $i$, one per view, share
# the weight $w_i$:
#
# $$L^{\text{DCLW}}_a = -w_{i(a)}\, s_{a,\mathrm{pos}(a)} + \log \sum_{j \in \mathcal{N}(a)} e^{s_{a,j}}. \tag{5.2}$$
#
# This is the DCLW loss of Yeh et al.; the denominator is that of DCL, without the positive.
# Per anchor, (5.2) is the DCL loss plus a correction to the positive term:
# $L^{\text{DCLW}}_a = L^{\text{DCL}}_a + (1 - w_{i(a)})\, s_{a,\mathrm{pos}(a)}$.

# %% [markdown]
# ### Exercise 5.2: DCLW from DCL
#
# Write `dclw_from_dcl(z1, z2, tau, sigma)` that returns the $2N$ per-anchor DCLW losses using
# `dcl(..., reduction="none")`, the weights and the positive similarities. Assume unit
# embeddings (`normalize=False`).

# %% exercise="5.2" tags=["exercise"]
def dclw_from_dcl(z1: torch.Tensor, z2: torch.Tensor, tau: float, sigma: float) -> torch.Tensor:
    """Per-anchor DCLW losses (2N,), Eq. (5.2), for unit-norm z1, z2 (N, D)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="5.2" tags=["check"]
expected = dclw(z1, z2, tau=0.2, sigma=0.5, normalize=False, reduction="none")  # (2N,)
verdict = check("5.2", dclw_from_dcl, z1, z2, 0.2, 0.5, expected=expected, atol=1e-9)
dclw_fn = (
    dclw_from_dcl
    if verdict.ok
    else (
        lambda z1, z2, tau, sigma: dclw(
            z1, z2, tau=tau, sigma=sigma, normalize=False, reduction="none"
        )
    )
)


# %% exercise="5.2" jupyter={"source_hidden": true} tags=["solution"]
def dclw_from_dcl(z1: torch.Tensor, z2: torch.Tensor, tau: float, sigma: float) -> torch.Tensor:  # noqa: F811
    """Per-anchor DCLW losses (2N,), Eq. (5.2), for unit-norm z1, z2 (N, D)."""
    c = (z1 * z2).sum(dim=1)  # (N,) cosines of the positive pairs
    w = 2 - c.shape[0] * torch.softmax(c / sigma, dim=0)  # (N,) Eq. (5.1)
    s_pos = torch.cat([c, c]) / tau  # (2N,) each pair's similarity, seen from both anchors
    per_dcl = dcl(z1, z2, tau=tau, normalize=False, reduction="none")  # (2N,)
    return per_dcl + (1 - torch.cat([w, w])) * s_pos  # (2N,)


# %% [markdown]
# Per anchor, DCLW is below DCL exactly for the pairs with $w_i > 1$ (the correction
# $(1 - w_i)\, s_{a,\mathrm{pos}(a)}$ is negative there, as long as the positive similarity is positive).
# With the function we carry on with:

# %% tags=["nbval-check-output"]
per_w = dclw_fn(z1, z2, 0.2, 0.5)  # (2N,)
per_d = dcl(z1, z2, tau=0.2, normalize=False, reduction="none")  # (2N,)
heavy = torch.cat([vmf_weights(z1, z2, sigma=0.5)] * 2) > 1  # (2N,) anchors of pairs with w > 1
assert torch.equal(per_w < per_d, heavy)
print(
    f"mean DCL {per_d.mean():.4f}, mean DCLW {per_w.mean():.4f}; {int(heavy.sum())} of 128 anchors lower"
)


# %% [markdown] slideshow={"slide_type": "subslide"}
# For the gradient, hold the weights fixed (*detach* them: they are numbers that scale the
# pull, not functions the optimiser may change). Then (5.2) differs from (4.1) only by the
# constant in front of $s_{a,\mathrm{pos}(a)}$, and the gradient is that of DCL (4.2), itself Proposition 1
# of Yeh et al. (Eq. 3) without the coupling factor, with the positive's terms scaled by $w$:
#
# $$\frac{\partial L^{\text{DCLW}}_a}{\partial z_a} = -\frac{1}{\tau}\Big(w_{i(a)}\, z_{\mathrm{pos}(a)} - \sum_{j \in \mathcal{N}(a)} p^-_{a,j}\, z_j\Big), \quad
# \frac{\partial L^{\text{DCLW}}_a}{\partial z_{\mathrm{pos}(a)}} = -\frac{w_{i(a)}}{\tau}\, z_a, \quad
# \frac{\partial L^{\text{DCLW}}_a}{\partial z_j} = \frac{p^-_{a,j}}{\tau}\, z_a. \tag{5.3}$$
#
# Averaged over the $2N$ anchors, the positive part of the batch loss is
# $-\frac{1}{N\tau}\sum_i w_i c_i$, so DCLW and DCL differ only along each pair's partner:
# $\partial L^{\text{DCLW}} / \partial z^{(1)}_i - \partial L^{\text{DCL}} / \partial z^{(1)}_i = -\frac{w_i - 1}{N\tau}\, z^{(2)}_i$.
# The package's `dclw` (with autograd), its closed form `dclw_grad`, and that difference:

# %% tags=["nbval-check-output"]
tau, sigma, n = 0.2, 0.5, 64
zz = torch.cat([z1, z2]).requires_grad_()  # (2N, D) one leaf for autograd
auto1, auto2 = torch.autograd.grad(dclw(zz[:n], zz[n:], tau=tau, sigma=sigma, normalize=False), zz)[
    0
].chunk(2)
g1, g2 = dclw_grad(z1, z2, tau=tau, sigma=sigma)  # (N, D) each, Eq. (5.3) averaged
assert torch.allclose(g1, auto1, atol=1e-12) and torch.allclose(g2, auto2, atol=1e-12)
w = vmf_weights(z1, z2, sigma=sigma)[:, None]  # (N, 1)
d1, d2 = dcl_grad(z1, z2, tau=tau)
assert torch.allclose(g1 - d1, -(w - 1) / (n * tau) * z2, atol=1e-12)
assert torch.allclose(g2 - d2, -(w - 1) / (n * tau) * z1, atol=1e-12)
print(f"dclw_grad = autograd of dclw; DCLW - DCL = -(w - 1) / (N tau) x partner, for all {n} pairs")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Detached or not?
#
# The weights depend on the embeddings, so one could also let the gradient flow through them.
# The paper does not settle this, and public implementations differ: some detach the weights
# (as `dcl_teach.dclw` does), others do not. The two choices give the same loss *value* but
# different gradients. Let us derive the difference. Write
# $\pi = \operatorname{softmax}(c/\sigma)$, so $w_i = 2 - N\pi_i$, and
# $\bar c = \sum_i \pi_i c_i$, a mean of the cosines that leans towards the well-aligned pairs.
# With $\partial \pi_i / \partial c_k = \pi_i(\delta_{ik} - \pi_k)/\sigma$, differentiating
# $-\frac{1}{N\tau}\sum_i w_i c_i$ through the weights as well adds, for every pair $k$,
#
# $$\frac{\partial L}{\partial c_k}\bigg|_{\text{live } w} - \frac{\partial L}{\partial c_k}\bigg|_{\text{detached } w}
# = \frac{\pi_k\,(c_k - \bar c)}{\tau\sigma} = \frac{(2 - w_k)(c_k - \bar c)}{N\tau\sigma}, \tag{5.4}$$
#
# which reaches the embeddings through $\partial c_k / \partial z^{(1)}_k = z^{(2)}_k$ and
# $\partial c_k / \partial z^{(2)}_k = z^{(1)}_k$. Its sign tells the story: for a pair more
# aligned than $\bar c$ the extra term pushes its cosine *down*, for a pair less aligned it pulls
# it *up*. Live weights add a force that makes all pairs **equally** aligned, because the loss can
# then also be lowered by reshaping the weights themselves. Detaching removes that second path.
#
# Here is the non-detached version, written with autograd in mind:

# %%
def dclw_live(z1: torch.Tensor, z2: torch.Tensor, *, tau: float, sigma: float) -> torch.Tensor:
    """Mean DCLW loss (5.2) whose weights (5.1) are NOT detached; unit-norm z1, z2 (N, D)."""
    c = (z1 * z2).sum(dim=1)  # (N,) cosines, with gradient
    w = 2 - c.shape[0] * torch.softmax(c / sigma, dim=0)  # (N,) live weights
    s_pos = torch.cat([c, c]) / tau  # (2N,)
    per_dcl = dcl(z1, z2, tau=tau, normalize=False, reduction="none")  # (2N,)
    return (per_dcl + (1 - torch.cat([w, w])) * s_pos).mean()


# %% tags=["nbval-check-output"]
zz = torch.cat([z1, z2]).requires_grad_()  # (2N, D)
live = dclw_live(zz[:n], zz[n:], tau=tau, sigma=sigma)
detached = dclw(zz[:n], zz[n:], tau=tau, sigma=sigma, normalize=False)
assert torch.allclose(live, detached, atol=1e-12)  # same value ...
live1, live2 = torch.autograd.grad(live, zz)[0].chunk(2)
det1, det2 = torch.autograd.grad(detached, zz)[0].chunk(2)
with torch.no_grad():
    pi = torch.softmax(c / sigma, dim=0)  # (N,)
    extra = (pi * (c - (pi * c).sum()) / (tau * sigma))[:, None]  # (N, 1) Eq. (5.4)
assert torch.allclose(live1 - det1, extra * z2, atol=1e-12)  # ... different gradients
assert torch.allclose(live2 - det2, extra * z1, atol=1e-12)
print(f"same loss {live.item():.4f}; gradients differ by exactly Eq. (5.4) on all {n} pairs")

# %% [markdown]
# How large is the extra term? It scales with $1/\sigma$ and with the spread of the cosines. The
# table compares, for the 64 pairs of section 1, the norm of the extra gradient with the norm of
# the whole detached gradient, and the average size of the extra pull on a pair's cosine with the
# average detached pull $|w_k|$ (both in units of $1/(N\tau)$).

# %% tags=["nbval-check-output"]
print("sigma   |extra| / |detached grad|   mean |extra pull|   mean |w|")
for s in (0.2, 0.5, 1.0, 2.0):
    zz = torch.cat([z1, z2]).requires_grad_()
    live = torch.autograd.grad(dclw_live(zz[:n], zz[n:], tau=tau, sigma=s), zz)[0]  # (2N, D)
    det = torch.autograd.grad(dclw(zz[:n], zz[n:], tau=tau, sigma=s, normalize=False), zz)[0]
    w = vmf_weights(z1, z2, sigma=s)  # (N,)
    c_bar = ((2 - w) / n * c).sum()
    pull = (2 - w) * (c - c_bar) / s  # (N,) Eq. (5.4) times N tau
    ratio = ((live - det).norm() / det.norm()).item()
    print(f"{s:5}  {ratio:25.3f}  {pull.abs().mean():18.3f}  {w.abs().mean():9.3f}")

# %% [markdown]
# At the default $\sigma = 0.5$ the extra term is a substantial fraction of the gradient, not a
# rounding error, so the choice matters. The figure shows the pull on each pair's cosine,
# $-N\tau\, \partial L / \partial c_k$: $w_k$ with detached weights, and
# $w_k - (2 - w_k)(c_k - \bar c)/\sigma$ with live ones. The live pull is stronger than the
# detached one below $\bar c$ and weaker above it: it drives the cosines towards $\bar c$. Note
# that with live weights the best-aligned pairs of this batch are pushed *apart*, although every
# one of their weights is positive.

# %%
w = vmf_weights(z1, z2, sigma=0.5)  # (N,)
c_bar = ((2 - w) / n * c).sum()
fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.scatter(c, w, s=14, label="detached: $w_k$")
ax.scatter(c, w - (2 - w) * (c - c_bar) / 0.5, s=14, marker="^", label="live: Eq. (5.4) added")
ax.axvline(c_bar, color="0.4", ls=":", lw=1, label=r"$\bar c$")
ax.axhline(0, color="0.3", lw=0.8)
ax.set(
    xlabel=r"cosine $c_k$ of pair $k$",
    ylabel=r"pull $-N\tau\,\partial L/\partial c_k$",
    title="σ = 0.5",
)
ax.legend()
plt.show()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Two more exercises, both about the weights on their own: what they become for a large
# $\sigma$, and the weight of an outlier.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 5.3: DCLW for large σ, to first order
#
# Section 2 said that for a large $\sigma$ every weight is close to 1. How close, and close to
# what? Expand (5.1) to first order in $1/\sigma$ (use $e^{x} \approx 1 + x$ for the numerator
# *and* for every term of the mean, then $1/(1 + y) \approx 1 - y$) and write
# `weights_large_sigma(c, sigma)` that returns your first-order weights, without any
# exponential. The check compares them with the exact weights at $\sigma = 20$, to within
# $10^{-3}$. Before you run it: which pairs get $w_i > 1$, and does your approximation still
# average to exactly 1?

# %% exercise="5.3" tags=["exercise"]
def weights_large_sigma(c: torch.Tensor, sigma: float) -> torch.Tensor:
    """First-order approximation in 1 / sigma of the DCLW weights (N,) of the cosines c (N,)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="5.3" tags=["check"]
verdict = check(
    "5.3", weights_large_sigma, c, 20.0, expected=vmf_weights_from_cosines(c, sigma=20.0), atol=1e-3
)
large_sigma_fn = (
    weights_large_sigma if verdict.ok else (lambda c, sigma: 1 - (c - c.mean()) / sigma)
)


# %% exercise="5.3" jupyter={"source_hidden": true} tags=["solution"]
def weights_large_sigma(c: torch.Tensor, sigma: float) -> torch.Tensor:  # noqa: F811
    """First-order approximation in 1 / sigma of the DCLW weights (N,) of the cosines c (N,)."""
    # e^(c_i/s) / mean_k e^(c_k/s) ~ (1 + c_i/s) / (1 + mean(c)/s) ~ 1 + (c_i - mean(c)) / s,
    # so w_i ~ 1 - (c_i - mean(c)) / s: pairs below the plain mean cosine get w > 1, and the
    # deviations average to zero, so the mean is exactly 1 at this order too.
    return 1 - (c - c.mean()) / sigma  # (N,)


# %% [markdown]
# So for a large $\sigma$ DCLW is DCL with a linear tilt: each pair's weight moves away from 1
# by its cosine's distance from the batch mean, divided by $\sigma$. How fast does the
# approximation we carry on with become exact? If the first-order term is right, the error is
# of second order and should shrink four-fold each time $\sigma$ doubles:

# %% tags=["nbval-check-output"]
errors = {}
for s in (5.0, 10.0, 20.0, 40.0):
    exact = vmf_weights_from_cosines(c, sigma=s)  # (N,)
    errors[s] = (large_sigma_fn(c, s) - exact).abs().max().item()
    print(
        f"sigma = {s:4}: largest |w - first order| = {errors[s]:.1e}, |w - 1| up to {(exact - 1).abs().max():.3f}"
    )
ratios = [errors[s] / errors[2 * s] for s in (5.0, 10.0, 20.0)]
assert all(3.5 < r < 4.5 for r in ratios)
print("error ratio per doubling of sigma:", ", ".join(f"{r:.2f}" for r in ratios))


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 5.4: the outlier's weight in closed form
#
# In a batch of $N$ pairs, one pair has cosine 1 and all others cosine 0. Write
# `outlier_weight(n, sigma)` returning the outlier's weight as a float, in closed form (no
# embeddings). Then find the smallest $N$ at which it is negative for $\sigma = 0.5$.

# %% exercise="5.4" tags=["exercise"]
def outlier_weight(n: int, sigma: float) -> float:
    """Weight (5.1) of the one pair at cosine 1 among n pairs, the others at cosine 0."""
    # Your code here.
    raise NotImplementedError


# %% exercise="5.4" tags=["check"]
c_check = torch.zeros(40, dtype=torch.float64)
c_check[0] = 1.0
zc1, zc2 = views_with_cosines(c_check, 8, generator=torch.Generator().manual_seed(3))
verdict = check(
    "5.4", outlier_weight, 40, 0.5, expected=vmf_weights(zc1, zc2, sigma=0.5)[0], atol=1e-9
)
outlier_fn = (
    outlier_weight
    if verdict.ok
    else (
        lambda n, sigma: vmf_weights_from_cosines(
            torch.eye(n, dtype=torch.float64)[0], sigma=sigma
        )[0].item()
    )
)


# %% exercise="5.4" jupyter={"source_hidden": true} tags=["solution"]
def outlier_weight(n: int, sigma: float) -> float:  # noqa: F811
    """Weight (5.1) of the one pair at cosine 1 among n pairs, the others at cosine 0."""
    e = math.exp(1 / sigma)  # the outlier's exp(c / sigma); the others contribute exp(0) = 1
    return 2 - n * e / (n - 1 + e)


# %% [markdown]
# The answer to the question, with the function we carry on with. The outlier's weight keeps
# falling as the batch grows, towards $2 - e^{1/\sigma}$:

# %% tags=["nbval-check-output"]
first = next(n for n in range(2, 10**6) if outlier_fn(n, 0.5) < 0)
print(f"sigma = 0.5: the outlier's weight is negative from N = {first} pairs on")
for n in (2, first, 256, 4096):
    print(f"N = {n:4}: w = {outlier_fn(n, 0.5):.4f}")
print(f"limit 2 - e^(1/sigma) = {2 - math.exp(2):.4f}")


# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# * DCLW weighs the positive term of DCL with $w_i = 2 - e^{c_i/\sigma}/\text{mean}_k\, e^{c_k/\sigma}$
#   (5.1), computed stably as $2 - N\operatorname{softmax}(c/\sigma)$.
# * The weights average to exactly 1 and stay below 2: hard (poorly aligned) pairs pull harder,
#   easy ones less. $\sigma$ sets how sharply: for large $\sigma$,
#   $w_i \approx 1 - (c_i - \bar c)/\sigma$, and DCLW tends to DCL.
# * A weight is negative when a pair is aligned far beyond the rest of the batch; that pair is
#   then pushed apart.
# * The DCLW loss (5.2) with detached weights has the DCL gradient with each positive term scaled
#   by $w$ (5.3). Letting the gradient flow through the weights adds the term (5.4), which pulls
#   all pair cosines towards a common value; `dcl_teach` detaches.
#
# **Exercises in this notebook**
#
# * 5.1 Where the formula breaks.
# * 5.2 DCLW from DCL.
# * 5.3 DCLW for large σ, to first order.
# * 5.4 The outlier's weight in closed form.
#
# Next: **06 Train it yourself**, where InfoNCE, DCL and DCLW train real encoders.
