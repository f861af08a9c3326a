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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dcl-teach/dcl-teach/blob/v0.1.0/notebooks/04_dcl.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/dcl-teach/dcl-teach/v0.1.0?urlpath=lab/tree/notebooks/04_dcl.ipynb)

# %% [markdown] slideshow={"slide_type": "slide"}
# # 04 · Decoupled contrastive learning (DCL)
#
# In notebook 02 you found that every term of the InfoNCE gradient carries the same factor, the
# coupling factor $q_B$, and in notebook 03 you watched $q_B$ sink towards zero when batches are
# small. Yeh et al. (2021) propose a remedy so simple it fits in one sentence: **take the
# positive out of the denominator**. The result is *decoupled contrastive learning*, DCL. In this
# notebook you derive it, prove in code that it is exactly "InfoNCE without $q_B$", measure
# what that is worth, and meet its one surprising property (the loss can be negative). An
# appendix runs it on a kernel that never builds the full similarity matrix.
#
# **In this notebook you will**
#
# 1. write the DCL loss (4.1) by hand and check it against `dcl_teach.losses.dcl`;
# 2. derive its gradient (4.2) and verify, anchor by anchor, that the InfoNCE gradient is the
#    DCL gradient times $q_B$, for the anchor, its positive and every negative; then derive the
#    gradient of the whole batch;
# 3. compare InfoNCE and DCL gradient magnitudes across batch sizes and temperatures, as the
#    encoder feels them (after the normalisation), with a slider;
# 4. see why the DCL loss can go below zero, derive its floor $\log(2N-2) - 2/\tau$ and the
#    lowest value $N$ images can actually reach, and check both numerically;
# 5. (appendix) check that the fused kernel of `dcl_teach.fused` gives the same values and
#    gradients as the full matrix, with a fraction of the memory.

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
from dcl_teach.fused import DEFAULT_TILE_ENTRIES, default_block_size
from dcl_teach.grads import coupling, dcl_grad, info_nce_grad
from dcl_teach.losses import dcl, info_nce
from dcl_teach.masks import negative_mask, positive_index
from dcl_teach.synthetic import qb_stats, synthetic_pool
from dcl_teach.widgets import explore_grad_comparison, explore_qb, render_grad_comparison

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
torch.manual_seed(0)  # every random tensor below also takes its own seeded generator
device = torch.device("cpu")  # everything here is small: a CPU is plenty, and prints stay exact
print(f"dcl_teach {dcl_teach.__version__} on {device}")


def unit_batch(n: int, d: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of n random pairs on the unit sphere, float64 (exact enough for gradient checks)."""
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # (N, D)
    z2 = F.normalize(
        z1 + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1
    )  # (N, D)
    return z1, z2


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Take the positive out of the denominator
#
# Recall InfoNCE (1.3) for anchor $a$ with positive $\mathrm{pos}(a)$ and the set $\mathcal{N}(a)$ of its
# $2N - 2$ negatives (both views of every other image), Eqs. 1 and 2 of Yeh et al.:
#
# $$L^{\text{InfoNCE}}_a = -s_{a,\mathrm{pos}(a)} + \log\Big(e^{s_{a,\mathrm{pos}(a)}} + \sum_{j \in \mathcal{N}(a)} e^{s_{a,j}}\Big).$$
#
# The positive appears twice: in the numerator, where it should be, and in the denominator, next
# to the negatives. That second appearance is what couples the two: the better the positive is
# matched, the larger its share of the denominator, the smaller $q_B$, and the smaller the
# gradient that the *negatives* receive. DCL simply drops it. With
# $U_a = \sum_{j \in \mathcal{N}(a)} e^{s_{a,j}}$ (the sum of Eq. 2 of Yeh et al.),
#
# $$L^{\text{DCL}}_a = -\log \frac{e^{s_{a,\mathrm{pos}(a)}}}{U_a} = -s_{a,\mathrm{pos}(a)} + \log \sum_{j \in \mathcal{N}(a)} e^{s_{a,j}}. \tag{4.1}$$
#
# This is the DCL loss of Yeh et al.; as everywhere in the course, the batch loss is the mean
# over the $2N$ anchors. Here it is as a plain loop over anchors, the way you would write it on
# paper:

# %%
def dcl_loop(z1: torch.Tensor, z2: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Per-anchor DCL losses (2N,), Eq. (4.1), one anchor at a time (z1, z2 on the unit sphere)."""
    z = torch.cat([z1, z2])  # (2N, D)
    n2 = z.shape[0]
    losses = []
    for a in range(n2):
        pos = (a + n2 // 2) % n2  # pos(a), the other view of the same image
        negatives = [j for j in range(n2) if j not in (a, pos)]  # 2N - 2 of them
        s_pos = z[a] @ z[pos] / tau
        s_neg = z[negatives] @ z[a] / tau  # (2N - 2,)
        losses.append(-s_pos + torch.logsumexp(s_neg, dim=0))
    return torch.stack(losses)  # (2N,)


# %% [markdown]
# The package computes the same thing without a loop (`reduction="none"` returns the $2N$
# per-anchor losses, in the order of `cat([z1, z2])`):

# %% tags=["nbval-check-output"]
z1, z2 = unit_batch(8, 16, seed=1)
loop = dcl_loop(z1, z2, tau=0.2)  # (2N,)
package = dcl(z1, z2, tau=0.2, normalize=False, reduction="none")  # (2N,)
assert torch.allclose(loop, package, atol=1e-12)
print(
    f"loop and package agree on all {loop.numel()} anchors; mean DCL = {package.mean().item():.4f}"
)

# %% [markdown]
# A closed form to test against, as in notebook 01: if all $2N$ embeddings are the same vector,
# every similarity is $1/\tau$, so $L_a = -1/\tau + \log\big((2N-2)\,e^{1/\tau}\big) = \log(2N-2)$,
# at any temperature.

# %% tags=["nbval-check-output"]
z_same = torch.ones(8, 3, dtype=torch.float64)  # (N, D)
for tau in (0.1, 1.0):
    value = dcl(z_same, z_same, tau=tau).item()
    assert math.isclose(value, math.log(2 * 8 - 2), rel_tol=1e-12)
    print(f"tau = {tau}: dcl = {value:.4f}, log(2N - 2) = {math.log(14):.4f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# How do the two losses compare, anchor by anchor? Subtract (4.1) from (1.3): the $-s_{a,\mathrm{pos}(a)}$
# cancels and what is left is
#
# $$L^{\text{InfoNCE}}_a - L^{\text{DCL}}_a = \log \frac{e^{s_{a,\mathrm{pos}(a)}} + U_a}{U_a} = -\log q_a,$$
#
# since $q_a = U_a / (e^{s_{a,\mathrm{pos}(a)}} + U_a)$ is exactly the coupling factor (2.4). So
# $L^{\text{DCL}}_a = L^{\text{InfoNCE}}_a + \log q_a$: DCL is always the smaller of the two, and
# the gap is largest for the anchors with the smallest $q_B$.

# %% tags=["nbval-check-output"]
per_info = info_nce(z1, z2, tau=0.2, normalize=False, reduction="none")  # (2N,)
q = coupling(z1, z2, tau=0.2, normalize=False)  # (2N,)
assert torch.allclose(package, per_info + q.log(), atol=1e-12)
print(f"DCL = InfoNCE + log q_B on every anchor; q_B ranges {q.min():.3f} .. {q.max():.3f}")

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.scatter(per_info, package, c=q, cmap="viridis", vmin=0, vmax=1, s=30)
line = torch.linspace(float(per_info.min()), float(per_info.max()), 2)
ax.plot(line, line, color="0.5", lw=1, label="DCL = InfoNCE")
ax.set(xlabel=r"$L^{\rm InfoNCE}_a$", ylabel=r"$L^{\rm DCL}_a$", title="one point per anchor")
fig.colorbar(ax.collections[0], ax=ax, label=r"$q_B$ of the anchor")
ax.legend()
plt.show()

# %% [markdown] slideshow={"slide_type": "subslide"}
# Here is a vectorised InfoNCE that builds the $2N \times 2N$ similarity matrix and keeps, in
# each row's log-sum-exp, every entry but the anchor itself:

# %%
def info_nce_dense(z1: torch.Tensor, z2: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Per-anchor InfoNCE (2N,), Eq. (1.3), from the full similarity matrix."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    s = z @ z.T / tau  # (2N, 2N)
    s_pos = s[torch.arange(2 * n), positive_index(n)]  # (2N,)
    in_denominator = ~torch.eye(2 * n, dtype=torch.bool)  # (2N, 2N) everything but the anchor
    return s.masked_fill(~in_denominator, float("-inf")).logsumexp(dim=1) - s_pos  # (2N,)


assert torch.allclose(info_nce_dense(z1, z2, tau=0.2), per_info, atol=1e-12)


# %% [markdown]
# ### Exercise 4.1: DCL from InfoNCE by changing one mask
#
# Write `dcl_dense` by copying `info_nce_dense` and changing **one line**: the mask of what goes
# into the denominator. (Hint: `dcl_teach.masks` has the mask you need.) Return the $2N$
# per-anchor losses.


# %% exercise="4.1" tags=["exercise"]
def dcl_dense(z1: torch.Tensor, z2: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Per-anchor DCL losses (2N,), Eq. (4.1): info_nce_dense with one mask changed."""
    # Your code here.
    raise NotImplementedError


# %% exercise="4.1" tags=["check"]
verdict = check(
    "4.1", dcl_dense, z1, z2, tau=0.2, expected=dcl(z1, z2, tau=0.2, reduction="none"), atol=1e-9
)
dcl_dense_fn = (
    dcl_dense if verdict.ok else (lambda z1, z2, *, tau: dcl(z1, z2, tau=tau, reduction="none"))
)


# %% exercise="4.1" jupyter={"source_hidden": true} tags=["solution"]
def dcl_dense(z1: torch.Tensor, z2: torch.Tensor, *, tau: float) -> torch.Tensor:  # noqa: F811
    """Per-anchor DCL losses (2N,), Eq. (4.1): info_nce_dense with one mask changed."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2N, D)
    s = z @ z.T / tau  # (2N, 2N)
    s_pos = s[torch.arange(2 * n), positive_index(n)]  # (2N,)
    in_denominator = negative_mask(n)  # (2N, 2N) the one change: the positive is left out too
    return s.masked_fill(~in_denominator, float("-inf")).logsumexp(dim=1) - s_pos  # (2N,)


# %% [markdown]
# Whichever version we carry on with, it also agrees with the package on a larger batch with
# raw (unnormalised) embeddings:

# %% tags=["nbval-check-output"]
g_big = torch.Generator().manual_seed(3)
raw1, raw2 = torch.randn(32, 8, generator=g_big), torch.randn(32, 8, generator=g_big)  # (N, D)
ours = dcl_dense_fn(raw1, raw2, tau=0.1)  # (2N,)
assert torch.allclose(ours, dcl(raw1, raw2, tau=0.1, reduction="none"), atol=1e-4)
print(
    f"N = 32: mean DCL {ours.mean().item():.3f}; {int((ours < 0).sum())} of 64 anchors below zero"
)


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The gradient: InfoNCE without $q_B$
#
# Differentiate (4.1) with respect to the similarities of row $a$. The log-sum-exp runs over the
# negatives only, so its derivative is the softmax *over the negatives alone*,
# $p^-_{a,j} = e^{s_{a,j}} / U_a$, and the positive contributes a plain $-1$:
#
# $$\frac{\partial L^{\text{DCL}}_a}{\partial s_{a,j}} = p^-_{a,j} \ (j \in \mathcal{N}(a)),
# \qquad \frac{\partial L^{\text{DCL}}_a}{\partial s_{a,\mathrm{pos}(a)}} = -1.$$
#
# For InfoNCE (notebook 02) the same derivatives were $p_{a,j} = q_a\, p^-_{a,j}$ and
# $-(1 - p_{a,\mathrm{pos}(a)}) = -q_a$: identical, except for the factor $q_a$. The chain rule through
# $s_{a,j} = \langle z_a, z_j \rangle / \tau$ does not care about that factor, so for unit
# embeddings
#
# $$\frac{\partial L^{\text{DCL}}_a}{\partial z_a} = -\frac{1}{\tau}\Big(z_{\mathrm{pos}(a)} - \sum_{j \in \mathcal{N}(a)} p^-_{a,j}\, z_j\Big), \quad
# \frac{\partial L^{\text{DCL}}_a}{\partial z_{\mathrm{pos}(a)}} = -\frac{z_a}{\tau}, \quad
# \frac{\partial L^{\text{DCL}}_a}{\partial z_j} = \frac{p^-_{a,j}}{\tau}\, z_a, \tag{4.2}$$
#
# and every line of Proposition 1 (Eq. 3 of Yeh et al.; Eqs. 2.5 to 2.7 of the course) is the
# matching line of (4.2) multiplied by $q_a$:
# $\nabla L^{\text{InfoNCE}}_a = q_a \, \nabla L^{\text{DCL}}_a$. DCL keeps the *direction* of
# every push and pull and removes the factor that shrinks them.
#
# First, (4.2) written out for one anchor, against autograd:

# %%
def dcl_anchor_grad(z: torch.Tensor, a: int, *, tau: float) -> torch.Tensor:
    """Gradient of L_a (4.1) with respect to every row of z = cat([z1, z2]): (2N, D), Eq. (4.2)."""
    n2 = z.shape[0]
    pos = (a + n2 // 2) % n2  # pos(a)
    negatives = negative_mask(n2 // 2)[a]  # (2N,) bool
    s = z @ z[a] / tau  # (2N,) similarities of anchor a
    p_neg = torch.softmax(s.masked_fill(~negatives, float("-inf")), dim=0)  # (2N,) zero off N(a)
    grad = p_neg[:, None] * z[a] / tau  # (2N, D) negatives: p_neg[j] z_a / tau
    grad[pos] = -z[a] / tau  # positive
    grad[a] = -(z[pos] - p_neg @ z) / tau  # anchor
    return grad


# %% tags=["nbval-check-output"]
z = torch.cat([z1, z2]).requires_grad_()  # (2N, D) one leaf, so autograd sees every row
per_anchor = dcl(z[:8], z[8:], tau=0.2, normalize=False, reduction="none")  # (2N,)
a = 3
(auto,) = torch.autograd.grad(per_anchor[a], z, retain_graph=True)  # (2N, D)
assert torch.allclose(dcl_anchor_grad(z.detach(), a, tau=0.2), auto, atol=1e-12)
print(f"Eq. (4.2) matches autograd for anchor {a}: {int((auto.norm(dim=1) > 0).sum())} rows move")

# %% [markdown]
# All 16 rows move: the anchor, its positive and all 14 negatives. Now the claim itself, for
# **every** anchor: the gradient of the InfoNCE term $L_a$ with respect to all embeddings
# equals $q_a$ times the gradient of the DCL term $L_a$.

# %% tags=["nbval-check-output"]
info_terms = info_nce(z[:8], z[8:], tau=0.2, normalize=False, reduction="none")  # (2N,)
q = coupling(z1, z2, tau=0.2, normalize=False)  # (2N,)
worst = 0.0
for a in range(16):
    (g_info,) = torch.autograd.grad(info_terms[a], z, retain_graph=True)  # (2N, D)
    (g_dcl,) = torch.autograd.grad(per_anchor[a], z, retain_graph=True)  # (2N, D)
    worst = max(worst, (g_info - q[a] * g_dcl).abs().max().item())
assert worst < 1e-12
print("grad InfoNCE_a == q_a * grad DCL_a for all 16 anchors, on anchor, positive and negatives")

# %% [markdown]
# The package's closed-form gradients say the same for the whole batch loss. Because
# $q_a$ multiplies each anchor's term, the InfoNCE gradient is the gradient of a
# *$q$-weighted* DCL loss in which the weights are held fixed:

# %% tags=["nbval-check-output"]
g1, g2 = dcl_grad(z1, z2, tau=0.2)  # closed form, (N, D) each
auto1, auto2 = torch.autograd.grad(dcl(z[:8], z[8:], tau=0.2, normalize=False), z)[0].chunk(2)
assert torch.allclose(g1, auto1, atol=1e-12) and torch.allclose(g2, auto2, atol=1e-12)
weighted = (q * dcl(z[:8], z[8:], tau=0.2, normalize=False, reduction="none")).mean()
w1, w2 = torch.autograd.grad(weighted, z)[0].chunk(2)
i1, i2 = info_nce_grad(z1, z2, tau=0.2)
assert torch.allclose(i1, w1, atol=1e-12) and torch.allclose(i2, w2, atol=1e-12)
print(f"dcl_grad = autograd; info_nce_grad = grad of mean(q * DCL_a); mean q_B = {q.mean():.4f}")


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 4.2: the DCL gradient of the batch, in closed form
#
# (4.2) is the gradient of *one* anchor's loss. Training uses the mean
# $L = \frac{1}{2N}\sum_a L^{\text{DCL}}_a$, and one embedding $z_k$ enters many of its terms:
# as the anchor of $L_k$, as the positive of $L_{\mathrm{pos}(k)}$, and as a negative of the
# others. Derive $\partial L / \partial z_k$ by collecting all of its contributions, then write
# `my_dcl_grad(z1, z2, tau)` returning $(\partial L / \partial z^{(1)}, \partial L / \partial z^{(2)})$
# for unit embeddings, without autograd and without a loop over anchors.
#
# Before you code, answer on paper: in how many of the $2N$ terms of $L$ does $z_k$ appear,
# and in which role? (Writing every $\partial L_a / \partial s_{a,j}$ into one $(2N, 2N)$ matrix
# helps: what do its rows give, and what do its columns give?)

# %% exercise="4.2" tags=["exercise"]
def my_dcl_grad(z1: torch.Tensor, z2: torch.Tensor, *, tau: float):
    """(dL/dz1, dL/dz2) of the mean DCL loss, each (N, D), for unit-norm z1, z2."""
    # Your code here.
    raise NotImplementedError


# %% exercise="4.2" tags=["check"]
verdict = check("4.2", my_dcl_grad, z1, z2, tau=0.2, expected=dcl_grad(z1, z2, tau=0.2), atol=1e-9)
dcl_grad_fn = my_dcl_grad if verdict.ok else dcl_grad


# %% exercise="4.2" jupyter={"source_hidden": true} tags=["solution"]
def my_dcl_grad(z1: torch.Tensor, z2: torch.Tensor, *, tau: float):  # noqa: F811
    """(dL/dz1, dL/dz2) of the mean DCL loss, each (N, D), for unit-norm z1, z2."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    s = z @ z.T / tau  # (2N, 2N)
    c = torch.softmax(s.masked_fill(~negative_mask(n), float("-inf")), dim=1)  # (2N, 2N) p_neg
    c[torch.arange(2 * n), positive_index(n)] = -1.0  # (2N, 2N) the positive's -1
    g = (c @ z + c.T @ z) / (2 * n * tau)  # (2N, D)
    return g[:n], g[n:]


# %% [markdown]
# With the gradient function we carry on with, one step of plain gradient descent on the
# embeddings lowers the DCL loss, as a correct gradient must:

# %% tags=["nbval-check-output"]
before = dcl(z1, z2, tau=0.2, normalize=False).item()
step1, step2 = dcl_grad_fn(z1, z2, tau=0.2)
after = dcl(z1 - 0.01 * step1, z2 - 0.01 * step2, tau=0.2).item()
assert after < before
print(f"DCL before {before:.4f}, after one small step {after:.4f}")


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. How much gradient does $q_B$ cost?
#
# Look at the anchor term of (4.2) and of its InfoNCE twin: the same vector, scaled by $1/\tau$
# for DCL and by $q_a/\tau$ for InfoNCE, so
# $\lVert \partial L^{\text{InfoNCE}}_a / \partial z_a \rVert = q_a \lVert \partial L^{\text{DCL}}_a / \partial z_a \rVert$.
#
# One caveat before we measure. The encoder does not output $z_a$ itself: its last step
# normalises, $z_a = h_a / \lVert h_a \rVert$. A change of $h_a$ along $z_a$ only changes its
# length, which the normalisation throws away, so the encoder feels only the part of the
# gradient *tangent* to the sphere at $z_a$, $(I - z_a z_a^\top)\, \partial L_a / \partial z_a$
# (notebook 02, `dcl_teach.grads.project_tangent`). The projection is linear, so the ratio of
# the two losses stays exactly $q_a$; only the lengths shrink. We call the length of that
# tangential anchor term the **magnitude** of a loss at anchor $a$, and show it once beside
# the length before projection.
#
# The batch size and the temperature decide how much the factor $q_a$ costs. Let us measure it
# on the synthetic batches of notebook 03 (positive cosine 0.5, negatives around 0.1): the
# same pool of 2,048 pairs, cut into batches of different sizes.

# %% tags=["nbval-check-output"]
pool = synthetic_pool(pos_sim=0.5, neg_sim=0.1)  # 2,048 pairs, (2048, 32) each
pool64 = tuple(t.double() for t in pool)  # float64: the printed digits hold on every CPU
print("                         before projection      tangential (magnitude)")
print("    τ  batch  mean q_B   InfoNCE       DCL      InfoNCE       DCL")
for tau in (0.1, 0.5):
    for batch in (4, 32, 256):
        st = qb_stats(*pool64, tau=tau, batch_size=batch)
        raw_i, raw_d = st.g_infonce_raw.mean().item(), st.g_dcl_raw.mean().item()
        assert st.mean_g_infonce < st.mean_g_dcl and (st.g_dcl <= st.g_dcl_raw + 1e-12).all()
        print(
            f"{tau:5}  {batch:5}  {st.mean_q:8.3f}  {raw_i:8.3f}  {raw_d:8.3f}"
            f"     {st.mean_g_infonce:8.3f}  {st.mean_g_dcl:8.3f}"
        )

# %% [markdown]
# Small batches at a low temperature are where InfoNCE's anchors get the smallest share of
# DCL's gradient (the mean $q_B$ column says how small); with hundreds of negatives the two
# nearly agree, because $q_B \approx 1$. A larger temperature flattens every softmax, which
# also pushes $q_B$ up. The projection shortens every magnitude a little and changes none of
# these conclusions.
#
# The figure shows the same for every batch size. Left: the mean magnitudes, solid, and faint
# the lengths before projection. Right: every anchor of the batch size marked by the dotted
# line, its DCL magnitude on x, its InfoNCE magnitude on y, coloured by its $q_B$. Each point
# sits exactly at height $q_B$ times its x, below the diagonal, where DCL's anchors would sit.

# %%
render_grad_comparison(tau=0.1, batch_size=8)

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now it is your turn to explore. Move **tau** and **batch size** (and the geometry of the
# synthetic batch) and watch where the two curves meet. Which is the smallest batch size at
# which InfoNCE keeps 90 % of DCL's gradient at $\tau = 0.1$? And at $\tau = 0.5$?

# %% tags=["nbval-ignore-output"]
explore_grad_comparison()

# %% [markdown]
# Notebook 03's histogram explorer left DCL out, because it had not been taught yet. Here it
# is again with DCL's mean magnitude beside InfoNCE's (`show_dcl=True`): at every setting the
# ratio of the two is the mean $q_B$... or is it? (Hint: the mean of a product.)

# %% tags=["nbval-ignore-output"]
explore_qb(show_dcl=True)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. A loss below zero, and its floor
#
# Without the positive in the denominator, the ratio $e^{s_{a,\mathrm{pos}(a)}} / U_a$ inside the log of
# (4.1) is no longer a probability: nothing keeps it below 1. When the positive is more
# similar to the anchor than the negatives are, taken together, the ratio exceeds 1 and
# $L^{\text{DCL}}_a < 0$. People meeting DCL for the first time often suspect a bug here. It is
# not one. An optimiser only ever sees the gradient, and the gradient (4.2) is perfectly sound;
# what matters is that the loss is **bounded below**, so that minimising it is a well-posed
# problem. Here is the bound. For unit embeddings every cosine lies in $[-1, 1]$, so
# $s_{a,\mathrm{pos}(a)} \le 1/\tau$ and each of the $2N-2$ terms of $U_a$ is at least $e^{-1/\tau}$:
#
# $$L^{\text{DCL}}_a \;\ge\; -\frac{1}{\tau} + \log\big((2N-2)\, e^{-1/\tau}\big) \;=\; \log(2N-2) - \frac{2}{\tau}. \tag{4.3}$$
#
# At $\tau = 0.1$ and $N = 2$ that is $\log 2 - 20 \approx -19.3$: a very negative number, and a
# perfectly healthy one.

# %%
def dcl_floor(n: int, tau: float) -> float:
    """Lower bound (4.3) of the DCL loss of every anchor: log(2N - 2) - 2 / tau."""
    return math.log(2 * n - 2) - 2 / tau


# %% [markdown]
# First check: hundreds of random batches, of several sizes and temperatures, including
# batches whose two views are identical (the positive as close as it can be). No anchor goes
# below its floor, and many anchors are negative.

# %% tags=["nbval-check-output"]
g = torch.Generator().manual_seed(0)
lowest_gap, negative = math.inf, 0
for n in (2, 4, 16):
    for tau in (0.05, 0.1, 0.5):
        z1r = torch.randn(100, n, 8, generator=g, dtype=torch.float64)  # 100 batches
        z2r = z1r + 0.3 * torch.randn(100, n, 8, generator=g, dtype=torch.float64)
        for b in range(100):
            view2 = z1r[b] if b % 5 == 0 else z2r[b]  # every fifth batch: identical views
            per = dcl(z1r[b], view2, tau=tau, reduction="none")  # (2N,)
            lowest_gap = min(lowest_gap, (per - dcl_floor(n, tau)).min().item())
            negative += int((per < 0).sum())
assert lowest_gap >= 0
print(
    f"900 batches: no anchor below the floor (closest gap {lowest_gap:.3f}); {negative} anchors < 0"
)

# %% [markdown]
# Second check: is the floor reached? It needs the positive at cosine $+1$ **and** every
# negative at cosine $-1$. With two images that is possible: put both views of image 1 at a
# vector $v$ and both views of image 2 at $-v$.

# %% tags=["nbval-check-output"]
v = F.normalize(torch.tensor([[1.0, 2.0, 2.0]], dtype=torch.float64), dim=1)  # (1, D)
z_extreme = torch.cat([v, -v])  # (2, D): image 1 at v, image 2 at -v, both views alike
for tau in (0.1, 0.5):
    value = dcl(z_extreme, z_extreme, tau=tau).item()
    assert math.isclose(value, dcl_floor(2, tau), rel_tol=1e-12)
    print(f"tau = {tau}: DCL of the extreme batch = {value:.4f} = log 2 - 2/tau")

# %% [markdown] slideshow={"slide_type": "subslide"}
# With more than two images the floor cannot be reached: three or more vectors cannot all be
# antipodal to each other. How low can the batch loss go, then? Let an optimiser find out:
# below, Adam moves the embeddings themselves (no network) to minimise DCL, for $N = 2, 4, 8$
# at $\tau = 0.5$.

# %%
def minimise_dcl(n: int, *, tau: float, steps: int = 300, seed: int = 0) -> list[float]:
    """Adam on free embeddings (N, 8) per view; returns the DCL loss after each step."""
    g = torch.Generator().manual_seed(seed)
    p1 = torch.randn(n, 8, generator=g, dtype=torch.float64, requires_grad=True)  # (N, D)
    p2 = torch.randn(n, 8, generator=g, dtype=torch.float64, requires_grad=True)  # (N, D)
    opt = torch.optim.Adam([p1, p2], lr=0.05)
    curve = []
    for _ in range(steps):
        opt.zero_grad()
        loss = dcl(p1, p2, tau=tau)  # normalises inside, so the embeddings stay on the sphere
        loss.backward()
        opt.step()
        curve.append(loss.item())
    return curve


curves = {n: minimise_dcl(n, tau=0.5) for n in (2, 4, 8)}

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.6))
for (n, curve), color in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green")):
    ax.plot(curve, color=color, label=f"N = {n}")
    ax.axhline(dcl_floor(n, 0.5), color=color, ls=":", lw=1)
ax.axhline(0, color="0.3", lw=0.8)
ax.set(
    xlabel="Adam step",
    ylabel="DCL loss",
    title="minimising DCL, τ = 0.5 (dotted: floor, Eq. (4.3))",
)
ax.legend()
plt.show()

# %% [markdown]
# For $N = 2$ the optimiser lands on the floor. For $N = 4$ and $8$ it stops above it, at a
# value you can work out yourself (Exercise 4.4 below); the runs above will check your answer.

# %% [markdown]
# So: a negative DCL loss means the positives are, on the whole, closer than the negatives,
# which is exactly what we train for. Only the *differences* of loss values carry meaning, so
# compare DCL runs with each other, not with InfoNCE numbers.
#
# How DCL is computed for batches so large that the $2N \times 2N$ similarity matrix no longer
# fits in memory is off the main line of this lesson: see the appendix after the summary.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Exercises
#
# Two more exercises, both on how low the DCL loss can go.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 4.3: a batch that sits on the floor
#
# Write `floor_batch(tau)` that builds a batch of $N = 2$ pairs (any dimension $D \ge 1$)
# whose DCL loss equals the floor $\log 2 - 2/\tau$, and returns `dcl(z1, z2, tau=tau)` of your
# batch. Then try $N = 3$: can you still reach $\log 4 - 2/\tau$? Why not?

# %% exercise="4.3" tags=["exercise"]
def floor_batch(tau: float) -> torch.Tensor:
    """DCL loss of a 2-pair batch built to reach the floor log(2) - 2 / tau."""
    # Your code here.
    raise NotImplementedError


# %% exercise="4.3" tags=["check"]
verdict = check("4.3", floor_batch, 0.2, expected=dcl_floor(2, 0.2), atol=1e-6)
floor_fn = floor_batch if verdict.ok else (lambda tau: dcl(z_extreme, z_extreme, tau=tau))


# %% exercise="4.3" jupyter={"source_hidden": true} tags=["solution"]
def floor_batch(tau: float) -> torch.Tensor:  # noqa: F811
    """DCL loss of a 2-pair batch built to reach the floor log(2) - 2 / tau."""
    # Positive at cosine +1 (both views alike), every negative at cosine -1 (the other image
    # points the opposite way). For N = 3 the three images cannot be pairwise antipodal.
    z = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)  # (2, 1)
    return dcl(z, z, tau=tau)


# %% [markdown]
# Whichever batch we carry on with sits on the floor at every temperature:

# %% tags=["nbval-check-output"]
for tau in (0.05, 0.1, 1.0):
    value = float(floor_fn(tau))
    assert math.isclose(value, dcl_floor(2, tau), rel_tol=1e-9)
    print(f"tau = {tau}: DCL {value:.4f} = floor {dcl_floor(2, tau):.4f}")


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 4.4: how low can $N$ images go?
#
# In section 4, Adam stopped above the floor for $N = 4$ and $8$. Suppose, as the optimiser
# finds, that at the optimum the two views of each image coincide and the $N$ images sit at
# the corners of a regular simplex: unit vectors whose pairwise cosines are all $-1/(N-1)$
# (they sum to zero, so they are spread as evenly as the sphere allows). Derive the DCL loss of
# that batch and write `simplex_dcl(n, tau)` that returns it as a float, in closed form (no
# embeddings). Before you run anything: does your value depend on the dimension $D$? As $N$
# grows, how far above the floor (4.3) does it stay?

# %% exercise="4.4" tags=["exercise"]
def simplex_dcl(n: int, tau: float) -> float:
    """DCL loss of N images at the corners of a regular simplex, both views alike."""
    # Your code here.
    raise NotImplementedError


# %% exercise="4.4" tags=["check"]
def simplex_batch(n: int) -> torch.Tensor:
    """(N, N) unit rows with pairwise cosines -1 / (N - 1): the corners of a regular simplex."""
    return F.normalize(torch.eye(n, dtype=torch.float64) - 1 / n, dim=1)  # (N, N)


verdict = check(
    "4.4", simplex_dcl, 5, 0.5, expected=dcl(simplex_batch(5), simplex_batch(5), tau=0.5), atol=1e-9
)
simplex_fn = (
    simplex_dcl
    if verdict.ok
    else (lambda n, tau: dcl(simplex_batch(n), simplex_batch(n), tau=tau).item())
)


# %% exercise="4.4" jupyter={"source_hidden": true} tags=["solution"]
def simplex_dcl(n: int, tau: float) -> float:  # noqa: F811
    """DCL loss of N images at the corners of a regular simplex, both views alike."""
    # Every anchor: the positive at cosine 1, all 2N - 2 negatives at cosine -1 / (N - 1), so
    # L = -1/tau + log((2N - 2) exp(-1 / ((N - 1) tau))), whatever D >= N - 1 is. Above the
    # floor log(2N - 2) - 2/tau by 1/tau - 1/((N - 1) tau): the gap tends to 1/tau.
    return -1 / tau + math.log(2 * n - 2) - 1 / ((n - 1) * tau)


# %% [markdown]
# The test of your answer: where Adam stopped in section 4, with the function we carry on
# with. (A short argument with Jensen's inequality and $\lVert \sum_a z_a \rVert^2 \ge 0$ shows
# that no batch of unit vectors does better on average; the simplex itself needs
# $D \ge N - 1$ dimensions, and the runs had $D = 8$.)

# %% tags=["nbval-check-output"]
for n, curve in curves.items():
    simplex = simplex_fn(n, 0.5)
    assert curve[-1] >= dcl_floor(n, 0.5) - 1e-9 and abs(curve[-1] - simplex) < 1e-4
    print(
        f"N = {n}: Adam reached {curve[-1]:.4f}, simplex value {simplex:.4f}, floor {dcl_floor(n, 0.5):.4f}"
    )


# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# * DCL removes the positive from the InfoNCE denominator (4.1). Per anchor,
#   $L^{\text{DCL}}_a = L^{\text{InfoNCE}}_a + \log q_a$.
# * Its gradient (4.2) is the InfoNCE gradient without the coupling factor: for every anchor,
#   $\nabla L^{\text{InfoNCE}}_a = q_a \nabla L^{\text{DCL}}_a$, on the anchor, the positive and all
#   negatives. You checked it with autograd and with `dcl_teach.grads`.
# * The price InfoNCE pays is largest for small batches and low temperatures, exactly where
#   $q_B$ is small; with hundreds of negatives the two gradients nearly agree.
# * The encoder feels only the tangential part of each gradient; the projection shortens the
#   magnitudes and keeps their ratio, $q_B$.
# * The DCL loss can be negative; it is bounded below by $\log(2N-2) - 2/\tau$ (4.3), reached
#   only for $N = 2$; $N$ images can reach the regular simplex's value, above the floor.
#   Only its gradient and its differences matter.
# * (Appendix) The fused kernel computes the same loss and gradient (4.4) block by block, in
#   memory that does not grow with $N^2$.
#
# **Exercises in this notebook**
#
# * 4.1 DCL from InfoNCE by changing one mask.
# * 4.2 The DCL gradient of the batch, in closed form.
# * 4.3 A batch that sits on the floor.
# * 4.4 How low can $N$ images go?
#
# Next: **05 Weighted DCL (DCLW)**, where the positive term gets a weight of its own.


# %% [markdown] slideshow={"slide_type": "slide"}
# ## Appendix: the same numbers with far less memory, the fused kernel
#
# This appendix is off the main line of the lesson: how to compute DCL (and InfoNCE) when the
# batch is too large for its similarity matrix. A straightforward implementation builds the $2N \times 2N$ similarity matrix, masks it,
# takes a softmax, and lets autograd keep all of it for the backward pass. At $N = 8192$ pairs
# the float32 matrix alone is 1 GiB. But look at the gradient once more. Write
# $P_{a,j}$ for the softmax of row $a$ over its denominator and collect
# $C_{a,j} = P_{a,j} - [j = \mathrm{pos}(a)]$. For the mean over $M = 2N$ anchors,
#
# $$\frac{\partial L}{\partial z_k} = \frac{1}{M\tau}\Big(\underbrace{\sum_j C_{k,j}\, z_j}_{k \text{ as an anchor}}
# + \underbrace{\sum_a C_{a,k}\, z_a}_{k \text{ as a candidate}}\Big). \tag{4.4}$$
#
# Both sums can be accumulated one block of anchor rows at a time: compute the block's
# similarities, its softmax and its slice of $C$, add its contribution to the gradient, and
# throw the block away. That is what `dcl_teach.fused` does (the same kernel serves InfoNCE,
# where the denominator keeps the positive). First, the numbers must not change:

# %% tags=["nbval-check-output"]
z1b, z2b = unit_batch(64, 32, seed=2)
dense_z = torch.cat([z1b, z2b]).requires_grad_()  # (2N, D)
dense_loss = dcl(dense_z[:64], dense_z[64:], tau=0.1, impl="dense")
(dense_grad,) = torch.autograd.grad(dense_loss, dense_z)  # (2N, D)
for block in (1, 7, 128):
    fused_z = torch.cat([z1b, z2b]).requires_grad_()  # (2N, D)
    fused_loss = dcl(fused_z[:64], fused_z[64:], tau=0.1, impl="fused", block_size=block)
    (fused_grad,) = torch.autograd.grad(fused_loss, fused_z)
    assert torch.allclose(fused_loss, dense_loss, atol=1e-12)
    assert torch.allclose(fused_grad, dense_grad, atol=1e-12)
print(f"fused (blocks of 1, 7, 128 rows) = dense: loss {dense_loss.item():.4f}, same gradient")

# %% [markdown]
# And the memory? The kernel picks its block so that one block of similarities holds a fixed
# number of float32 entries, `DEFAULT_TILE_ENTRIES` (`default_block_size` divides it by the
# number of candidates, but never goes below 16 rows); a block never has more rows than there
# are anchors. The table compares the full matrix with one block (computed from the sizes, not
# measured; a dense implementation keeps several such matrices alive, so the true ratio is
# larger still).

# %% tags=["nbval-check-output"]
MIB = 2**20
sizes = (256, 1024, 4096, 16384, 65536)
dense_mib, block_mib = [], []
print(f"tile budget: {DEFAULT_TILE_ENTRIES:,} entries = {4 * DEFAULT_TILE_ENTRIES / MIB:.0f} MiB")
print("      N   2N x 2N matrix   block rows   one block")
for n in sizes:
    rows = min(default_block_size(2 * n), 2 * n)
    dense_mib.append(4 * (2 * n) ** 2 / MIB)
    block_mib.append(4 * rows * 2 * n / MIB)
    print(f"{n:7}  {dense_mib[-1]:11.1f} MiB  {rows:11}  {block_mib[-1]:6.1f} MiB")
assert max(block_mib) <= 4 * DEFAULT_TILE_ENTRIES / MIB and dense_mib[-1] == 64 * 1024

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
ax.loglog(sizes, dense_mib, "o-", label=r"full $2N \times 2N$ matrix")
ax.loglog(sizes, block_mib, "s-", label="one block of the fused kernel")
ax.set(xlabel="pairs per batch N", ylabel="MiB (float32)", title="memory of the similarities")
ax.legend()
plt.show()

# %% [markdown]
# The full matrix grows as $N^2$ (64 GiB at $N = 65{,}536$); one block never exceeds the tile
# budget, whatever the batch size. What does grow with $N$ is the $(2N, D)$ gradient the kernel accumulates, which is no
# bigger than the embeddings themselves.
#
# In one process `dcl` goes one step further (`dcl_teach.symmetric`): the candidates are the
# anchors, so the similarity matrix is symmetric, and only its square tiles on and above the
# diagonal are computed (2048 x 2048 at most, the same budget), each one serving two blocks of
# rows. Forward and backward then cost about two matrix products of the size of $S$ instead
# of three.
