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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dcl-teach/dcl-teach/blob/v0.1.0/notebooks/02_infonce_gradient.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/dcl-teach/dcl-teach/v0.1.0?urlpath=lab/tree/notebooks/02_infonce_gradient.ipynb)

# %% [markdown] slideshow={"slide_type": "slide"}
# # 02 · The gradient of InfoNCE
#
# A loss only matters through its gradient: that is all the encoder ever sees of it. In this
# notebook you differentiate InfoNCE by hand, one small step at a time, and check every step
# against PyTorch's autograd. On the way a single number falls out of the algebra and
# multiplies the whole gradient of an anchor: the **coupling factor** $q_B$. It is the reason
# Decoupled Contrastive Learning exists.
#
# **Learning goals.** By the end you can
#
# 1. derive the derivative of an anchor's loss with respect to its similarities, Eqs.
#    $(2.1)$ to $(2.3)$, and spot the coupling factor $q_B$ $(2.4)$ (Eq. 4 of Yeh et al., 2021);
# 2. derive the gradients with respect to the anchor, its positive and a negative, Eqs. $(2.5)$
#    to $(2.7)$ (Proposition 1 and Eq. 3 of the paper), and see that $q_B$ multiplies all three;
# 3. check each formula against autograd, for one anchor and for the whole batch
#    (`dcl_teach.grads.info_nce_grad`);
# 4. explain why an anchor stops learning when $q_B \approx 0$, even when its positive is far
#    away.
#
# You need the chain rule and the derivative of $\log \sum_k e^{x_k}$; notebook 01 provides the
# rest.

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
import numpy as np
import torch
import torch.nn.functional as F

from dcl_teach.exercises import check
from dcl_teach.grads import coupling, info_nce_grad, project_tangent
from dcl_teach.losses import info_nce
from dcl_teach.masks import negative_mask, positive_index

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
torch.manual_seed(0)  # every random tensor below also takes its own seeded generator
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"running on {device}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Setting the scene
#
# We reuse the batch of notebook 01 ($N = 4$ pairs in $D = 8$ dimensions), now in float64 so
# that analytic and automatic gradients can agree to about 12 digits. Recall, for anchor $a$
# with positive $\mathrm{pos}(a)$ and the set $\mathcal{N}(a)$ of its $2N - 2$ negatives,
#
# $$ s_{a,j} = \frac{\langle z_a, z_j \rangle}{\tau}, \qquad
#    L_a = -s_{a,\mathrm{pos}(a)} + \log \sum_{k \ne a} e^{s_{a,k}}, \qquad
#    \sum_{k \ne a} e^{s_{a,k}} = e^{s_{a,\mathrm{pos}(a)}} + U_a, \quad
#    U_a = \sum_{j \in \mathcal{N}(a)} e^{s_{a,j}}, $$
#
# that is, Eqs. $(1.1)$ and $(1.3)$, and the softmax weights $p_{a,j}$ of $(1.2)$.
#
# We differentiate with respect to the **normalised** embeddings $z$, the rows on the unit
# sphere; `info_nce(..., normalize=False)` is the loss of exactly those. (Section 4 shows how the
# normalisation step changes the picture: it keeps only the part of each gradient that runs
# along the sphere, and leaves $q_B$ untouched.)

# %%
N, D, tau = 4, 8, 0.1
gen = torch.Generator().manual_seed(0)
raw = torch.randn(N, D, generator=gen)  # (N, D) the batch of notebook 01
z1 = F.normalize(raw.double(), dim=1).to(device)  # (N, D)
z2 = F.normalize((raw + 0.5 * torch.randn(N, D, generator=gen)).double(), dim=1).to(
    device
)  # (N, D)
z = torch.cat([z1, z2])  # (2N, D)
pos = positive_index(N, device=device)  # (2N,) pos(a)
neg = negative_mask(N, device=device)  # (2N, 2N) j in N(a)
rows = torch.arange(2 * N, device=device)  # (2N,)
print(f"z {tuple(z.shape)} {z.dtype}, tau = {tau}")


# %% [markdown]
# Autograd is our referee. The first helper returns the gradient of **one** anchor's loss $L_a$
# with respect to every row of $z$: the $a$-th entry of `info_nce(..., reduction="none")`,
# differentiated by `torch.autograd.grad`. The second does the same through the normalisation
# (`normalize=True`, section 4) and keeps, for every anchor, the row of its positive (the
# reference for Exercise 2.2).

# %%
def anchor_loss_grad(
    z1: torch.Tensor, z2: torch.Tensor, a: int, tau: float, normalize: bool = False
) -> torch.Tensor:
    """dL_a/dz for every row of z = cat([z1, z2]), by autograd: (2N, D)."""
    z1 = z1.detach().clone().requires_grad_()  # (N, D)
    z2 = z2.detach().clone().requires_grad_()  # (N, D)
    loss_a = info_nce(z1, z2, tau=tau, normalize=normalize, reduction="none")[a]
    grad_1, grad_2 = torch.autograd.grad(loss_a, (z1, z2))
    return torch.cat([grad_1, grad_2])  # (2N, D)


def positive_pull_autograd(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """|dL_a/dr_{pos(a)}| through the normalisation (unit inputs, so |r| = 1): (2N,)."""
    n = z1.shape[0]
    rows = [
        anchor_loss_grad(z1, z2, a, tau, normalize=True)[(a + n) % (2 * n)] for a in range(2 * n)
    ]
    return torch.stack(rows).norm(dim=1)  # (2N,)


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Step one: the derivative with respect to the similarities
#
# $L_a$ reads only row $a$ of the similarity matrix, and from that row every entry except the
# diagonal $s_{a,a}$. Differentiate the two terms of $L_a$ separately. The first, $-s_{a,\mathrm{pos}(a)}$,
# contributes $-1$ at the positive and $0$ elsewhere. The second is a log-sum-exp, whose
# derivative is the softmax: $\partial/\partial s_{a,j} \log \sum_{k \ne a} e^{s_{a,k}} =
# e^{s_{a,j}} / \sum_{k \ne a} e^{s_{a,k}} = p_{a,j}$. Together, for every $j \ne a$,
#
# $$ \frac{\partial L_a}{\partial s_{a,j}} = p_{a,j} - [\, j = \mathrm{pos}(a) \,]. \tag{2.1}$$
#
# (The bracket is $1$ when the statement inside is true and $0$ otherwise.) Now look at the two
# kinds of entries. At the **positive**,
#
# $$ \frac{\partial L_a}{\partial s_{a,\mathrm{pos}(a)}} = p_{a,\mathrm{pos}(a)} - 1 = -\big(1 - p_{a,\mathrm{pos}(a)}\big).
#    \tag{2.2}$$
#
# At a **negative** $j \in \mathcal{N}(a)$ it is $p_{a,j} = e^{s_{a,j}} / (e^{s_{a,\mathrm{pos}(a)}} + U_a)$.
# Multiply and divide by $U_a$, and notice that $U_a / (e^{s_{a,\mathrm{pos}(a)}} + U_a)$ is exactly the
# $1 - p_{a,\mathrm{pos}(a)}$ of the positive:
#
# $$ \frac{\partial L_a}{\partial s_{a,j}}
#    = \frac{U_a}{e^{s_{a,\mathrm{pos}(a)}} + U_a} \cdot \frac{e^{s_{a,j}}}{U_a}
#    = \big(1 - p_{a,\mathrm{pos}(a)}\big)\, p^-_{a,j},
#    \qquad p^-_{a,j} = \frac{e^{s_{a,j}}}{U_a}, \quad j \in \mathcal{N}(a). \tag{2.3}$$
#
# Here $p^-_{a,j}$ is a softmax over the negatives alone (it sums to $1$ over
# $\mathcal{N}(a)$; the package calls it `pn`). The same number appears in $(2.2)$ and $(2.3)$.
# It gets a name, the **coupling factor** of anchor $a$:
#
# $$ q_a = 1 - p_{a,\mathrm{pos}(a)} = \frac{U_a}{e^{s_{a,\mathrm{pos}(a)}} + U_a} \in (0, 1). \tag{2.4}$$
#
# This is $q_B$, Eq. 4 of Yeh et al. (2021), their $q_{B,i}^{(k)}$ for image $i$ and view $k$.
# Through $U_a$ it depends on every other embedding in the batch. In words: $q_a$ is the
# softmax probability that anchor $a$ does *not* pick its positive. Putting it together,
#
# $$ \frac{\partial L_a}{\partial s_{a,\mathrm{pos}(a)}} = -q_a, \qquad
#    \frac{\partial L_a}{\partial s_{a,j}} = q_a p^-_{a,j} \quad (j \in \mathcal{N}(a)). $$
#
# The pull on the positive and the total push on the negatives are equal, $q_a$ each, so the
# row of derivatives sums to zero.

# %% [markdown] slideshow={"slide_type": "subslide"}
# Check it. We make the similarity matrix a leaf tensor, write $L_a$ directly in terms of $s$,
# and let autograd differentiate; then we compare with $(2.1)$, $(2.2)$ and $(2.3)$ for
# anchor $a = 0$, and with `dcl_teach.grads.coupling` for $q_a$.

# %%
a = 0
s = (z @ z.T / tau).detach().requires_grad_()  # (2N, 2N) Eq. (1.1) as a leaf
self_mask = torch.eye(2 * N, dtype=torch.bool, device=device)  # (2N, 2N) the anchor itself
loss_a = -s[a, pos[a]] + s[a].masked_fill(self_mask[a], float("-inf")).logsumexp(dim=0)  # Eq. (1.3)
(auto_ds,) = torch.autograd.grad(loss_a, s)  # (2N, 2N) only row a is non-zero

with torch.no_grad():
    p = torch.softmax(s.masked_fill(self_mask, float("-inf")), dim=1)  # (2N, 2N) Eq. (1.2)
    q = coupling(z1, z2, tau=tau, normalize=False)  # (2N,) Eq. (2.4), from the package
    p_minus = torch.softmax(s.masked_fill(~neg, float("-inf")), dim=1)  # (2N, 2N) over N(a)
    ours_ds = torch.zeros_like(s)  # (2N, 2N)
    ours_ds[a] = p[a] - (rows == pos[a]).double()  # Eq. (2.1)
    ours_ds[a, a] = 0.0  # L_a does not read s_aa

assert torch.allclose(auto_ds, ours_ds, rtol=1e-12, atol=1e-14)
print(f"(2.1) matches autograd for every entry of row {a} (and the other rows are 0)")

# %% tags=["nbval-check-output"]
assert torch.isclose(q[a], 1 - p[a, pos[a]])  # (2.4)
assert torch.isclose(auto_ds[a, pos[a]], -q[a])  # (2.2)
assert torch.allclose(auto_ds[a][neg[a]], q[a] * p_minus[a][neg[a]])  # (2.3)
print(f"anchor {a}: dL/ds at the positive = {auto_ds[a, pos[a]].item():.5f} = -q_a")
print(f"anchor {a}: dL/ds summed over the negatives = {auto_ds[a][neg[a]].sum().item():.5f} = q_a")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Here is the row of derivatives for two anchors of our batch. In notebook 01, anchor 2 ranked
# its positive first by a wide margin (cosine 0.969 against at most $-0.067$ for a negative) and
# anchor 3 was the hard case, with negatives more similar than its positive. The green bar is
# $-q_a$; the blue bars are $q_a p^-_{a,j}$ and add up to $q_a$. Mind the very different scales.

# %%
with torch.no_grad():
    C = torch.where(neg, q[:, None] * p_minus, torch.zeros_like(s))  # (2N, 2N) Eq. (2.3)
    C[rows, pos] = -q  # (2N, 2N) Eq. (2.2): row a holds dL_a/ds_{a, j}

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for ax, anchor in zip(axes, (2, 3)):
    row = C[anchor].cpu().numpy()  # (2N,)
    colors = ["tab:green" if j == pos[anchor] else "tab:blue" for j in range(2 * N)]
    ax.bar(range(2 * N), row, color=colors)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="candidate j", ylabel=r"$\partial L_a / \partial s_{a,j}$", xticks=range(2 * N))
    ax.set_title(f"anchor a = {anchor}: $q_a$ = {q[anchor].item():.3g}")
plt.tight_layout()
plt.show()
assert torch.allclose(C.sum(dim=1), torch.zeros(2 * N, dtype=C.dtype, device=device), atol=1e-12)
assert q[3] > 1000 * q[2]

# %% [markdown]
# Anchor 2 has almost nothing left to learn: its softmax already puts nearly all its weight on
# the positive, $q_2$ is tiny, and so is every derivative in its row. Anchor 3 still gets most
# of the probability wrong; $q_3$ is large and so is its gradient. So far, so sensible.
# Section 5 shows when this same factor is *not* sensible.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2.1: $q_B$ from the logits
#
# Write `my_coupling(z1, z2, tau)`: build the logits $s = z z^\top / \tau$ of $(1.1)$ from the
# two (already normalised) views, and return the $(2N,)$ vector of coupling factors $q_a$ of
# $(2.4)$, in the order of the rows of $z$. Hint: compute $\log p_{a,\mathrm{pos}(a)}$ with a `logsumexp`
# that leaves out the diagonal (as in notebook 01); then $q_a = 1 - e^{\log p_{a,\mathrm{pos}(a)}}$, for
# which `-torch.expm1(...)` is the accurate way when $q_a$ is tiny.

# %% exercise="2.1" tags=["exercise"]
def my_coupling(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """q_a of Eq. (2.4) for every anchor of z = cat([z1, z2]), from the logits s: (2N,)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="2.1" tags=["check"]
verdict = check(
    "2.1", my_coupling, z1, z2, tau, expected=coupling(z1, z2, tau=tau, normalize=False)
)
coupling_fn = (
    my_coupling if verdict.ok else (lambda z1, z2, tau: coupling(z1, z2, tau=tau, normalize=False))
)

# %% exercise="2.1" jupyter={"source_hidden": true} tags=["solution"]
def my_coupling(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """q_a of Eq. (2.4) for every anchor of z = cat([z1, z2]), from the logits s: (2N,)."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    s = z @ z.T / tau  # (2N, 2N) Eq. (1.1)
    rows = torch.arange(2 * n, device=z.device)  # (2N,)
    s_pos = s[rows, (rows + n) % (2 * n)]  # (2N,) s_{a,pos(a)}
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)  # (2N, 2N)
    log_p_pos = s_pos - s.masked_fill(self_mask, float("-inf")).logsumexp(dim=1)  # (2N,)
    return -torch.expm1(log_p_pos)  # (2N,) Eq. (2.4): 1 - p_{a,pos(a)}


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Step two: from similarities to embeddings
#
# Each similarity is an inner product, $s_{a,j} = \langle z_a, z_j \rangle / \tau$, so
#
# $$ \frac{\partial s_{a,j}}{\partial z_a} = \frac{z_j}{\tau}, \qquad
#    \frac{\partial s_{a,j}}{\partial z_j} = \frac{z_a}{\tau} \qquad (j \ne a). $$
#
# The anchor $z_a$ enters $L_a$ through every entry of its row; the positive $z_{\mathrm{pos}(a)}$ only
# through $s_{a,\mathrm{pos}(a)}$; a negative $z_j$ only through $s_{a,j}$. The chain rule, with the
# derivatives of section 2, gives three gradients, one per role:
#
# $$ \frac{\partial L_a}{\partial z_a}
#    = \sum_{j \ne a} \frac{\partial L_a}{\partial s_{a,j}} \frac{z_j}{\tau}
#    = \frac{q_a}{\tau} \Big( -z_{\mathrm{pos}(a)} + \sum_{j \in \mathcal{N}(a)} p^-_{a,j}\, z_j \Big),
#    \tag{2.5}$$
#
# $$ \frac{\partial L_a}{\partial z_{\mathrm{pos}(a)}} = -\frac{q_a}{\tau}\, z_a, \tag{2.6}$$
#
# $$ \frac{\partial L_a}{\partial z_j} = \frac{q_a}{\tau}\, p^-_{a,j}\, z_a,
#    \qquad j \in \mathcal{N}(a). \tag{2.7}$$
#
# Gradient descent moves each embedding *against* its gradient. Read with a minus sign: the
# anchor is pulled towards its positive and pushed away from a weighted average of its
# negatives, in which the most similar negatives weigh most; the positive is pulled towards the
# anchor; each negative is pushed away from the anchor, in proportion to its weight
# $p^-_{a,j}$. And **every** term carries the same factor $q_a / \tau$.
#
# Up to that sign (the paper writes $-\nabla$, the direction of the update), these are Eq. 3 of
# Yeh et al. (2021), and the observation that one factor $q_B$ multiplies all of them is their
# Proposition 1.

# %% [markdown] slideshow={"slide_type": "subslide"}
# Check all three against autograd, for anchor $a = 0$. Every row of $z$ plays exactly one of
# the three roles in $L_a$, so together the three formulas must give the whole $(2N, D)$
# gradient.

# %%
a = 0
auto = anchor_loss_grad(z1, z2, a, tau)  # (2N, D) dL_a/dz by autograd
q_a = coupling(z1, z2, tau=tau, normalize=False)[a]  # Eq. (2.4)
w_neg = p_minus[a].detach()  # (2N,) p^-_{a,j}, zero off N(a)

grad_anchor = q_a / tau * (-z[pos[a]] + w_neg @ z)  # (D,) Eq. (2.5)
grad_positive = -q_a / tau * z[a]  # (D,) Eq. (2.6)
grad_negatives = q_a / tau * w_neg[neg[a], None] * z[a]  # (2N-2, D) Eq. (2.7)

# %% tags=["nbval-check-output"]
assert torch.allclose(grad_anchor, auto[a], rtol=1e-10, atol=1e-12)
ours, autograd = grad_anchor.norm().item(), auto[a].norm().item()
print(f"(2.5) anchor:   |dL_a/dz_a| = {ours:.5f}, autograd {autograd:.5f}")

# %% tags=["nbval-check-output"]
assert torch.allclose(grad_positive, auto[pos[a]], rtol=1e-10, atol=1e-12)
ours, autograd = grad_positive.norm().item(), auto[pos[a]].norm().item()
print(f"(2.6) positive: |dL_a/dz_pos(a)| = {ours:.5f}, autograd {autograd:.5f}")

# %% tags=["nbval-check-output"]
assert torch.allclose(grad_negatives, auto[neg[a]], rtol=1e-10, atol=1e-12)
ours, autograd = grad_negatives.norm(dim=1).max().item(), auto[neg[a]].norm(dim=1).max().item()
print(f"(2.7) negatives: largest |dL_a/dz_j| = {ours:.5f}, autograd {autograd:.5f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# To *see* the three roles, go down to $D = 2$, where embeddings are points on a circle. Below,
# $N = 3$ pairs; the arrows are $-\partial L_a / \partial z$ for the loss of anchor $a = 0$
# alone (at $\tau = 0.5$, so that all arrows are visible), that is, the direction in which one
# step of gradient descent on $L_0$ moves each point. The faint arrows are these gradients as
# derived; the solid ones keep only their part *along* the circle, the part that survives the
# normalisation of the encoder's output (section 4 derives it:
# $(I - z z^\top)\,g$, `dcl_teach.grads.project_tangent`).

# %%
angles = torch.tensor([0.0, 110.0, 230.0, 45.0, 150.0, 280.0], dtype=torch.float64)  # (2N,) degrees
circle = torch.stack([torch.cos(angles.deg2rad()), torch.sin(angles.deg2rad())], dim=1)  # (6, 2)
flat1, flat2 = circle[:3], circle[3:]  # (3, 2) each: view 1 and view 2
step = -anchor_loss_grad(flat1, flat2, 0, 0.5)  # (6, 2) the update direction of each point
along = project_tangent(step, circle)  # (6, 2) its part along the circle
roles_2d = ["anchor", "negative", "negative", "positive", "negative", "negative"]

fig, ax = plt.subplots(figsize=(5.5, 6), layout="constrained")
t = np.linspace(0, 2 * np.pi, 200)
ax.plot(np.cos(t), np.sin(t), color="0.85", zorder=0)
colors = {"anchor": "tab:red", "positive": "tab:green", "negative": "tab:blue"}
for j, (point, arrow) in enumerate(zip(circle, step)):
    ax.scatter(*point, s=80, color=colors[roles_2d[j]], zorder=3)
    ax.annotate(f"{j}", point * 1.13, ha="center", va="center")
    ax.arrow(
        *point,
        *(0.5 * arrow),
        width=0.012,
        color=colors[roles_2d[j]],
        alpha=0.25,
        length_includes_head=True,
    )
    ax.arrow(
        *point, *(0.5 * along[j]), width=0.012, color=colors[roles_2d[j]], length_includes_head=True
    )
for role, color in colors.items():
    ax.scatter([], [], color=color, label=role)
ax.plot([], [], color="0.4", alpha=0.3, lw=3, label="before projection")
ax.plot([], [], color="0.2", lw=3, label="along the circle")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=8)  # below the circle
ax.set(
    xlim=(-1.45, 1.45),
    ylim=(-1.45, 1.45),
    aspect="equal",
    title=r"$-\partial L_0/\partial z$, $\tau = 0.5$",
)
ax.axis("off")
plt.show()
toward_anchor = (step @ circle[0]).tolist()  # (6,) > 0: moves towards anchor 0
assert toward_anchor[3] > 0 and all(toward_anchor[j] < 0 for j in (1, 2, 4, 5))
assert torch.allclose((along * circle).sum(dim=1), torch.zeros(6, dtype=torch.float64))

# %% [markdown]
# The positive (green) moves towards the anchor, the negatives (blue) move away from it, and
# the nearest negative, point 5, gets the longest blue arrow: it has the largest weight
# $p^-_{0,j}$. The anchor (red) heads towards its positive and away from point 5. Part of
# each faint arrow points straight out of or into the circle; the normalisation step removes
# that part (section 4), and only the motion *along* the circle, the solid arrow, remains.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. The whole batch
#
# The loss of the batch is the mean $L = \frac{1}{2N} \sum_a L_a$. Each embedding $z_k$ shows
# up in it in all three roles: as the anchor of $L_k$, as the positive of $L_{\mathrm{pos}(k)}$ (anchor
# $\mathrm{pos}(k)$ has positive $k$), and as a negative in the losses of the $2N - 2$ anchors $a$ with
# $k \in \mathcal{N}(a)$. Summing $(2.5)$, $(2.6)$ and $(2.7)$ over the anchors,
#
# $$ \frac{\partial L}{\partial z_k} = \frac{1}{2N} \Big(
#    \underbrace{\frac{\partial L_k}{\partial z_k}}_{(2.5)}
#    + \underbrace{\frac{\partial L_{\mathrm{pos}(k)}}{\partial z_k}}_{(2.6)}
#    + \sum_{a \,:\, k \in \mathcal{N}(a)} \underbrace{\frac{\partial L_a}{\partial z_k}}_{(2.7)}
#    \Big). $$
#
# Below, this sum is written as a loop, term by term. `dcl_teach.grads.info_nce_grad` computes
# the same thing with two matrix products: it stores $\partial L_a / \partial s_{a,j}$ (the
# matrix `C` of our bar chart) and uses $s_{a,j}$'s two derivatives, $z_j / \tau$ and
# $z_a / \tau$, as `C @ z` and `C.T @ z`.

# %%
def info_nce_grad_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float):
    """dL/dz1, dL/dz2 of the mean InfoNCE loss by summing (2.5)-(2.7) over the anchors."""
    n = z1.shape[0]
    z = torch.cat([z1, z2])  # (2N, D)
    pos, neg = (
        positive_index(n, device=z.device),
        negative_mask(n, device=z.device),
    )  # (2N,), (2N, 2N)
    q = coupling(z1, z2, tau=tau, normalize=False)  # (2N,) Eq. (2.4)
    s = z @ z.T / tau  # (2N, 2N) Eq. (1.1)
    p_minus = torch.softmax(s.masked_fill(~neg, float("-inf")), dim=1)  # (2N, 2N)
    grad = torch.zeros_like(z)  # (2N, D)
    for a in range(2 * n):
        grad[a] += q[a] / tau * (-z[pos[a]] + p_minus[a] @ z)  # Eq. (2.5) anchor
        grad[pos[a]] += -q[a] / tau * z[a]  # Eq. (2.6) positive
        for j in torch.nonzero(neg[a]).flatten().tolist():
            grad[j] += q[a] / tau * p_minus[a, j] * z[a]  # Eq. (2.7) negative
    grad /= 2 * n  # the mean over the 2N anchors
    return grad[:n], grad[n:]


# %% [markdown]
# Three-way check: our loop, the package's closed form, and autograd on the mean loss.

# %% tags=["nbval-check-output"]
loop_1, loop_2 = info_nce_grad_loop(z1, z2, tau)  # (N, D) each
pkg_1, pkg_2 = info_nce_grad(z1, z2, tau=tau)  # (N, D) each
leaf_1, leaf_2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
auto_1, auto_2 = torch.autograd.grad(
    info_nce(leaf_1, leaf_2, tau=tau, normalize=False), (leaf_1, leaf_2)
)
for ours, theirs in ((loop_1, pkg_1), (loop_2, pkg_2), (loop_1, auto_1), (loop_2, auto_2)):
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
largest = torch.cat([pkg_1, pkg_2]).abs().max().item()
print(f"loop = info_nce_grad = autograd; largest entry of |dL/dz| = {largest:.5f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# **What the normalisation adds.** In practice the encoder outputs raw vectors $r$ and the loss
# normalises them, $z = r / \lVert r \rVert$ (the default `normalize=True`). The chain rule
# through that step multiplies our gradient $g = \partial L / \partial z$ by the Jacobian of
# the normalisation,
#
# $$ \frac{\partial L}{\partial r} = \frac{1}{\lVert r \rVert}\big(I - z z^\top\big)\, g, $$
#
# which removes the radial part of $g$ (the part along $z$, the part that points out of the
# sphere) and scales the rest by $1 / \lVert r \rVert$. Every conclusion about $q_B$ carries
# over unchanged: it multiplies $g$, so it multiplies $\partial L / \partial r$ too.

# %%
r1 = 3.0 * torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(
    device
)  # (N, D) raw
r2 = r1 + torch.randn(N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(
    device
)  # (N, D) raw
raw_1, raw_2 = r1.clone().requires_grad_(), r2.clone().requires_grad_()
auto_r1, auto_r2 = torch.autograd.grad(
    info_nce(raw_1, raw_2, tau=tau), (raw_1, raw_2)
)  # normalize=True
u1, u2 = F.normalize(r1, dim=1), F.normalize(r2, dim=1)  # (N, D) each
g1, g2 = info_nce_grad(u1, u2, tau=tau)  # (N, D) each, gradient w.r.t. the normalised rows


def through_normalisation(g: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """(I - z z^T) g / |r| for every row: (N, D)."""
    z = F.normalize(r, dim=1)  # (N, D)
    return (g - (g * z).sum(dim=1, keepdim=True) * z) / r.norm(dim=1, keepdim=True)


torch.testing.assert_close(through_normalisation(g1, r1), auto_r1, rtol=1e-10, atol=1e-12)
torch.testing.assert_close(through_normalisation(g2, r2), auto_r2, rtol=1e-10, atol=1e-12)
print("gradient w.r.t. the raw outputs = (I - z z^T) g / |r|: checked for both views")

# %% [markdown]
# So every gradient *magnitude* that matters for learning is the norm of the tangential part,
# $\lVert (I - z z^\top) g \rVert$, never larger than $\lVert g \rVert$. From here on the course
# plots that part (and says so when it shows the norm before projection). Because $q_B$ is a
# scalar in front of $g$, the projection cannot remove it.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 2.2: what the positive really feels
#
# By $(2.6)$, anchor $a$'s loss pulls its positive along $z_a$ with strength $q_a / \tau$.
# Through the normalisation, only the tangential part of that pull reaches the encoder. Derive
# its length for a unit raw output ($\lVert r \rVert = 1$): project $-\frac{q_a}{\tau} z_a$
# with $I - z_{\mathrm{pos}(a)} z_{\mathrm{pos}(a)}^\top$ and simplify using the cosine
# $c_a = \langle z_a, z_{\mathrm{pos}(a)} \rangle$. Then write `positive_pull(z1, z2, tau)`: the
# $(2N,)$ vector of these lengths, one per anchor $a$. You may use `coupling_fn(z1, z2, tau)`
# from Exercise 2.1.
#
# Before you run the check, predict: for which cosines $c_a$ does the positive feel *no* pull
# at all, whatever $q_a$? A cell after the check tests your answer.

# %% exercise="2.2" tags=["exercise"]
def positive_pull(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Row a: |(I - z_pos z_pos^T) dL_a/dz_pos(a)| for every anchor a of cat([z1, z2]): (2N,)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="2.2" tags=["check"]
verdict = check("2.2", positive_pull, z1, z2, tau, expected=positive_pull_autograd(z1, z2, tau))
positive_pull_fn = positive_pull if verdict.ok else positive_pull_autograd

# %% exercise="2.2" jupyter={"source_hidden": true} tags=["solution"]
def positive_pull(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Row a: |(I - z_pos z_pos^T) dL_a/dz_pos(a)| for every anchor a of cat([z1, z2]): (2N,)."""
    # (I - z_p z_p^T)(-(q_a / tau) z_a) = -(q_a / tau)(z_a - c_a z_p), and
    # |z_a - c_a z_p|^2 = 1 - 2 c_a^2 + c_a^2 = 1 - c_a^2. So the length is (q_a / tau) sqrt(1 - c_a^2).
    q = coupling_fn(z1, z2, tau)  # (2N,) Eq. (2.4)
    c = (z1 * z2).sum(dim=1).repeat(2)  # (2N,) c_a, the same for both anchors of a pair
    return q / tau * (1 - c**2).clamp_min(0).sqrt()  # (2N,)


# %% [markdown]
# The answer: at $c_a = \pm 1$, where $\sqrt{1 - c_a^2} = 0$. An aligned pair needs no pull; but
# a pair whose views point in *opposite* directions gets none either. Its gradient before
# projection, $q_a / \tau$, is as large as it can be, and all of it is radial. Test it on a batch
# whose first pair is opposite:

# %% tags=["nbval-check-output"]
opp_1 = torch.eye(D, dtype=torch.float64)[:N]  # (N, D) orthogonal anchors
opp_2 = opp_1.clone()  # (N, D)
opp_2[0] = -opp_1[0]  # pair 0 opposite: c_0 = -1
raw_pull = -(coupling(opp_1, opp_2, tau=tau) / tau)[:, None] * torch.cat(
    [opp_1, opp_2]
)  # (2N, D) Eq. (2.6), row a on the positive of anchor a
felt = positive_pull_fn(opp_1, opp_2, tau)  # (2N,)
assert felt[0].item() < 1e-12 and raw_pull[0].norm().item() > 9
print(
    f"anchor 0 (c = -1): before projection {raw_pull[0].norm().item():.4f}, "
    f"tangential {felt[0].item():.4f}"
)

# %% [markdown]
# Gradient descent cannot start rotating such a pair: the exactly opposite position is an
# (unstable) equilibrium of the positive's pull. In practice views are never exactly opposite,
# but near $c_a = -1$ the felt pull is small, $\propto \sqrt{1 - c_a^2}$, however large $q_a$ is.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. When $q_B \approx 0$, learning stalls
#
# Every term of an anchor's gradient is scaled by $q_a / \tau$. When $q_a \approx 0$, the anchor
# and its positive barely move, whatever else is going on. When does that happen? $q_a$ is the
# probability that the softmax of row $a$ misses the positive, so $q_a \approx 0$ whenever
# $e^{s_{a,\mathrm{pos}(a)}} \gg U_a$: whenever the positive beats the negatives **by a margin that is large
# compared with $\tau$**. Nothing in that condition says the positive must be *close* to the
# anchor. It only has to be closer than the negatives.
#
# Let us build exactly that case. One pair, anchor $a = 0$ and its positive, has cosine
# similarity $0.2$: they are $78°$ apart, far from aligned. The other $N - 1$ pairs sit on the
# other side of the sphere, each of their $2N - 2$ embeddings at cosine $-0.6$ from both the
# anchor and its positive. (The anchor and positive are placed symmetrically around the first
# axis, and the negatives spread out in the remaining $D - 2$ dimensions.)

# %%
def far_pair_batch(c_pos: float, c_neg: float, n: int = 4, d: int = 8, seed: int = 0):
    """Pair 0 at cosine c_pos; every other embedding at cosine c_neg from both of its views."""
    alpha = math.acos(c_pos) / 2  # the anchor and its positive sit at +-alpha from the first axis
    beta = c_neg / math.cos(alpha)  # first coordinate of every negative: cos(alpha) * beta = c_neg
    if abs(beta) > 1:
        raise ValueError(f"cannot place negatives at cosine {c_neg} from a pair at cosine {c_pos}")
    gen = torch.Generator().manual_seed(seed)
    u = F.normalize(
        torch.randn(2 * n - 2, d - 2, dtype=torch.float64, generator=gen), dim=1
    )  # (2n-2, d-2)
    others = torch.zeros(2 * n - 2, d, dtype=torch.float64)  # (2n-2, d) the negatives
    others[:, 0] = beta
    others[:, 2:] = math.sqrt(1 - beta**2) * u
    anchor = torch.zeros(1, d, dtype=torch.float64)  # (1, d)
    anchor[0, :2] = torch.tensor([math.cos(alpha), math.sin(alpha)], dtype=torch.float64)
    positive = anchor.clone()  # (1, d)
    positive[0, 1] = -positive[0, 1]
    return torch.cat([anchor, others[: n - 1]]), torch.cat(
        [positive, others[n - 1 :]]
    )  # (n, d) each


far_1, far_2 = far_pair_batch(0.2, -0.6)
far_cos = torch.cat([far_1, far_2]) @ torch.cat([far_1, far_2]).T  # (2N, 2N)
assert math.isclose(far_cos[0, N].item(), 0.2, rel_tol=1e-12)
assert torch.allclose(far_cos[0][neg[0].cpu()], torch.tensor(-0.6, dtype=torch.float64))
print(f"cos(anchor, positive) = {far_cos[0, N].item():.3f}, cos(anchor, every negative) = -0.600")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now the coupling factor and the gradient norms, at the default temperature $\tau = 0.1$ and
# at $\tau = 0.5$: $q_0$ (with your `my_coupling` if it passed), then the tangential part (what
# the encoder feels, section 4) of the gradient of the anchor's own loss on the anchor (2.5) and
# on the positive (2.6, with your `positive_pull` if it passed), each next to its norm before
# projection, and the anchor's row of the whole-batch gradient (`info_nce_grad`), projected.

# %% tags=["nbval-check-output"]
z_far = torch.cat([far_1, far_2])  # (2N, D)
for t in (0.1, 0.5):
    q_far = coupling_fn(far_1, far_2, t)  # (2N,)
    g_own = anchor_loss_grad(far_1, far_2, 0, t)  # (2N, D) dL_0/dz, every row
    felt = project_tangent(g_own, z_far).norm(dim=1)  # (2N,) tangential parts
    felt_positive = float(positive_pull_fn(far_1, far_2, t)[0])  # Exercise 2.2
    batch_grad = project_tangent(info_nce_grad(far_1, far_2, tau=t)[0][0], far_1[0])  # (D,)
    assert math.isclose(felt_positive, felt[N].item(), rel_tol=1e-9)
    print(
        f"tau = {t}: q_0 = {q_far[0].item():.2e}; tangential |dL_0/dz_0| = {felt[0].item():.2e} "
        f"(before projection {g_own[0].norm().item():.2e}), |dL_0/dz_pos(0)| = "
        f"{felt_positive:.2e} (before {g_own[N].norm().item():.2e}), "
        f"batch |dL/dz_0| = {batch_grad.norm().item():.2e}"
    )
    if t == 0.1:
        assert q_far[0] < 3e-3 and felt_positive < 0.03
        print(
            f"          without q_0 the gradients of L_0 would be 1/q_0 = {1 / q_far[0].item():.0f} times larger"
        )
q_01 = coupling_fn(far_1, far_2, 0.1)  # (2N,)
print("q of every anchor at tau = 0.1:", [round(v, 3) for v in q_01.tolist()])
others = torch.cat([q_01[1:N], q_01[N + 1 :]])  # (2N - 2,) every anchor but pair 0
print(f"the other anchors: q between {others.min().item():.2f} and {others.max().item():.2f}")

# %% [markdown]
# At $\tau = 0.1$ the pair at $78°$ gets a tiny $q_0$: its gradients are hundreds of times
# smaller than they would be without the factor (the cell prints how many). The other anchors of
# the same batch, which are crowded together and have hard negatives, keep $q$ close to $1$ and
# take all the learning signal. The smaller temperature makes it worse, not better, although
# $1/\tau$ is five times larger: $q_0$ falls much faster than $1/\tau$ grows.
#
# For this geometry, with every negative at the same cosine $c_-$ and the positive at $c_+$,
# $(2.4)$ has a closed form that shows why: $U_a = (2N - 2)\, e^{c_-/\tau}$, so
#
# $$ q_a = \frac{1}{1 + e^{(c_+ - c_-)/\tau} / (2N - 2)}. $$
#
# Only the **gap** $c_+ - c_-$, measured in units of $\tau$, matters, and the number of negatives
# $2N - 2$ sits in the denominator: a small batch makes $q_a$ smaller still (notebook 03 explores
# this).

# %% tags=["nbval-check-output"]
for t in (0.1, 0.5):
    closed = 1 / (1 + math.exp((0.2 - (-0.6)) / t) / (2 * N - 2))
    assert math.isclose(
        closed, coupling(far_1, far_2, tau=t, normalize=False)[0].item(), rel_tol=1e-9
    )
    print(f"tau = {t}: closed form q_0 = {closed:.4e}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same story for every positive similarity $c_+$ and a few temperatures. Left, the
# coupling factor $q_0$; right, the norm of the tangential part of the anchor's gradient (2.5),
# both on a log scale.
# The dotted line marks the pair of the example.

# %%
c_grid = np.linspace(-0.25, 1.0, 51)  # (51,) positive cosine; the geometry needs c_+ >= -0.28 here
fig_taus = (0.05, 0.1, 0.2, 0.5)
q_curves, g_curves = {}, {}
for t in fig_taus:
    q_curves[t], g_curves[t] = [], []
    for c in c_grid:
        b1, b2 = far_pair_batch(float(c), -0.6)
        q_curves[t].append(coupling(b1, b2, tau=t, normalize=False)[0].item())
        g_own = anchor_loss_grad(b1, b2, 0, t)[0]  # (D,) Eq. (2.5)
        g_curves[t].append(project_tangent(g_own, b1[0]).norm().item())  # what the encoder feels

fig, (ax_q, ax_g) = plt.subplots(1, 2, figsize=(10, 3.8))
for t in fig_taus:
    ax_q.plot(c_grid, q_curves[t], lw=2, label=rf"$\tau$ = {t}")
    ax_g.plot(c_grid, g_curves[t], lw=2, label=rf"$\tau$ = {t}")
for ax, ylabel in (
    (ax_q, r"coupling factor $q_0$"),
    (ax_g, r"tangential $\|\partial L_0 / \partial z_0\|$"),
):
    ax.axvline(0.2, color="0.4", ls=":")
    ax.set(
        yscale="log",
        xlabel=r"cosine of the positive pair, $c_+$ (negatives at $-0.6$)",
        ylabel=ylabel,
    )
ax_q.legend()
ax_q.set_title("how much of the gradient survives")
ax_g.set_title("gradient on the anchor, along the sphere")
plt.tight_layout()
plt.show()
assert all(np.all(np.diff(q_curves[t]) < 0) for t in fig_taus)  # a closer positive: smaller q
assert (
    q_curves[0.05][0] < q_curves[0.1][0] < q_curves[0.2][0] < q_curves[0.5][0]
)  # smaller tau: smaller q

# %% [markdown]
# Every curve falls as the positive gets closer: InfoNCE stops working on a pair once it wins
# the softmax, not once the pair is aligned. With small $\tau$ the cut-off is sharp, and at
# $\tau = 0.05$ even an orthogonal positive ($c_+ = 0$) receives essentially no gradient when its
# negatives are far. That is the *negative-positive coupling* of Yeh et al.: how much a
# positive pair learns is decided by the negatives, through $q_B$. Their remedy, Decoupled
# Contrastive Learning, removes the positive from the denominator, and with it the factor $q_B$
# from every gradient (notebook 04).

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# * $\partial L_a / \partial s_{a,j} = p_{a,j} - [j = \mathrm{pos}(a)]$ $(2.1)$: $-q_a$ at the positive
#   $(2.2)$ and $q_a p^-_{a,j}$ at a negative $(2.3)$, with the coupling factor
#   $q_a = 1 - p_{a,\mathrm{pos}(a)} = U_a / (e^{s_{a,\mathrm{pos}(a)}} + U_a)$ $(2.4)$, Eq. 4 of Yeh et al.
# * Chain rule through $s_{a,j} = \langle z_a, z_j \rangle / \tau$: the gradients on the anchor
#   $(2.5)$, the positive $(2.6)$ and each negative $(2.7)$ all carry $q_a / \tau$
#   (Proposition 1 and Eq. 3 of the paper).
# * The batch gradient sums the three roles of every embedding; `info_nce_grad` does it with two
#   matrix products, and autograd agrees with both. Normalisation projects the gradient onto
#   the sphere: only its tangential part $(I - z z^\top) g$ reaches the encoder, and that is
#   the magnitude the course plots. $q_B$, a scalar factor, survives the projection.
# * $q_a \approx 0$ when the positive beats the negatives by a margin large compared with
#   $\tau$, however far the positive is from the anchor; then the pair stops learning.
#
# **Exercises in this notebook**
#
# * 2.1 $q_B$ from the logits.
# * 2.2 What the positive really feels.
#
# **To think about** (no code). Using the closed form of section 5, how many pairs $N$ would
# the batch need for $q_0$ to reach $0.5$ at $\tau = 0.1$? What does that suggest about why
# SimCLR needs large batches?
#
# Next: **03 $q_B$, batch size and temperature**.
