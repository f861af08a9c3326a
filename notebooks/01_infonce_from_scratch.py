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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dcl-teach/dcl-teach/blob/v0.1.0/notebooks/01_infonce_from_scratch.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/dcl-teach/dcl-teach/v0.1.0?urlpath=lab/tree/notebooks/01_infonce_from_scratch.ipynb)

# %% [markdown] slideshow={"slide_type": "slide"}
# # 01 · InfoNCE from scratch
#
# InfoNCE (also called NT-Xent, the SimCLR loss) turns "two views of the same image should have
# similar embeddings, views of different images should not" into a number you can minimise. In
# this notebook you build it one piece at a time, and at every step you check your piece
# against `dcl_teach.losses.info_nce`.
#
# **Learning goals.** By the end you can
#
# 1. build the $2N \times 2N$ similarity matrix of a batch of two views, Eq. $(1.1)$;
# 2. point to every anchor's positive and to its $2N - 2$ negatives, same-view and cross-view,
#    with `dcl_teach.masks`;
# 3. write the loss, Eqs. $(1.2)$ and $(1.3)$, three ways: the naive `exp`/`sum` (and watch it
#    overflow), the stable `logsumexp`, and an explicit loop that reads like the paper;
# 4. use two closed forms to test any implementation of the loss.

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
from matplotlib.colors import ListedColormap

from dcl_teach.exercises import check
from dcl_teach.losses import info_nce
from dcl_teach.masks import negative_mask, positive_index

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
torch.manual_seed(0)  # every random tensor below also takes its own seeded generator
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"running on {device}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. Two views of a batch
#
# A contrastive method such as SimCLR takes a batch of $N$ images, augments each one twice
# (random crops, colour changes, ...), and passes all $2N$ augmented images through the same
# encoder. The result is two matrices of embeddings, $z^{(1)}$ and $z^{(2)}$, each of shape
# $(N, D)$. Row $i$ of `z1` and row $i$ of `z2` come from the *same* image: they form a
# **positive pair**. Any two rows that come from different images do not.
#
# We do not need images or an encoder to study the loss: we make up embeddings. `z2` is `z1`
# plus some noise, so that each positive pair is similar but not identical, as after a real
# augmentation. Then we put every row on the unit sphere, as the loss does.

# %%
N, D = 4, 8  # pairs in the batch, embedding dimension
gen = torch.Generator().manual_seed(0)
raw = torch.randn(N, D, generator=gen)  # (N, D) what an encoder would output for view 1
z1 = F.normalize(raw, dim=1).to(device)  # (N, D)
z2 = F.normalize(raw + 0.5 * torch.randn(N, D, generator=gen), dim=1).to(device)  # (N, D)
z = torch.cat([z1, z2])  # (2N, D) row a is anchor a
print(f"z1 {tuple(z1.shape)}, z2 {tuple(z2.shape)}, stacked z {tuple(z.shape)}")

# %% [markdown]
# Check: every row has length 1.

# %%
norms = z.norm(dim=1)  # (2N,)
assert torch.allclose(norms, torch.ones_like(norms))
print(f"row lengths between {norms.min().item():.4f} and {norms.max().item():.4f}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. The similarity matrix
#
# The loss compares every row of $z$ with every other row. With unit-length rows, the inner
# product $\langle z_a, z_j \rangle$ is the cosine of the angle between them: $1$ for the same
# direction, $0$ for orthogonal, $-1$ for opposite. Dividing by a **temperature** $\tau > 0$
# stretches these numbers before they enter a softmax: a small $\tau$ makes the softmax sharp.
#
# $$ s_{a,j} = \frac{\langle z_a, z_j \rangle}{\tau}, \qquad s = \frac{z z^\top}{\tau}
#    \in \mathbb{R}^{2N \times 2N} \tag{1.1}$$

# %%
tau = 0.1
s = z @ z.T / tau  # (2N, 2N) Eq. (1.1)
print(f"s has shape {tuple(s.shape)}")

# %% [markdown]
# Check: $s$ is symmetric, and its diagonal is $1/\tau$ (every row is perfectly similar to
# itself). That diagonal is useless to the loss, and we will have to keep it out.

# %%
assert torch.allclose(s, s.T) and torch.allclose(s.diagonal(), torch.full((2 * N,), 1 / tau))
print(f"symmetric: True, diagonal = 1/tau = {s.diagonal().mean().item():.4f}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Positives and negatives
#
# Call each row $a$ of $z$ an **anchor**. Its **positive** is the other view of the same
# image: row $a + N$ for an anchor of the first view, row $a - N$ for one of the second view,
#
# $$\mathrm{pos}(a) = (a + N) \bmod 2N.$$
#
# Every other row except $a$ itself is a **negative**: both views of the $N - 1$ other images,
# so $N - 1$ *same-view* negatives and $N - 1$ *cross-view* negatives, $2N - 2$ in all. The paper
# uses both kinds (its Eq. 2 sums over both views $l \in \{1, 2\}$ and all images $j \ne i$).
#
# Masks are where contrastive losses most often break, so the package keeps them in one small,
# tested module, `dcl_teach.masks`:

# %%
pos = positive_index(N, device=device)  # (2N,) pos(a) for every anchor a
neg = negative_mask(N, device=device)  # (2N, 2N) True where j is a negative of a
rows = torch.arange(2 * N, device=device)  # (2N,) 0, ..., 2N-1
print("pos(a) for a = 0..7:", pos.tolist())
print("negatives of anchor 0:", torch.nonzero(neg[0]).flatten().tolist())

# %% [markdown]
# Check: the positive of the positive is the anchor again, and every row has exactly $2N - 2$
# negatives, none of which is the anchor or its positive.

# %%
assert torch.equal(pos[pos], rows)
assert (
    (neg.sum(dim=1) == 2 * N - 2).all() and not neg[rows, rows].any() and not neg[rows, pos].any()
)
print(f"pos(pos(a)) = a for all a; each anchor has {2 * N - 2} negatives")

# %% [markdown] slideshow={"slide_type": "subslide"}
# A picture is worth a lot here. On the left, the role of every entry $(a, j)$ of the matrix;
# on the right, the cosine similarities $\tau s_{a,j}$ of our batch, with the positives circled
# and the self-similarities (which the loss leaves out) crossed. The dashed lines split the
# matrix into its view-1/view-2 blocks: same-view negatives live in the diagonal blocks,
# cross-view negatives and the positives in the off-diagonal ones.

# %%
r, p, negatives = rows.cpu(), pos.cpu(), neg.cpu()  # plotting happens on the CPU
same_view = (r[:, None] < N) == (r[None, :] < N)  # (2N, 2N) both rows from the same view
roles = torch.full((2 * N, 2 * N), 2)  # (2N, 2N) 0 self, 1 positive, 2 same-view, 3 cross-view
roles[negatives & ~same_view] = 3
roles[r, p] = 1
roles[r, r] = 0
cos = (z @ z.T).cpu()  # (2N, 2N) cosine similarities, s * tau

fig, (ax_roles, ax_cos) = plt.subplots(1, 2, figsize=(10, 4.4))
role_colors = ["0.55", "tab:green", "tab:blue", "tab:orange"]
ax_roles.imshow(roles, cmap=ListedColormap(role_colors), vmin=-0.5, vmax=3.5)
for k, name in enumerate(
    ["self (left out)", "positive", "same-view negative", "cross-view negative"]
):
    ax_roles.plot([], [], "s", color=role_colors[k], ms=10, label=name)
ax_roles.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
ax_roles.set_title("role of each entry (a, j)")

im = ax_cos.imshow(
    cos.masked_fill(torch.eye(2 * N, dtype=torch.bool), float("nan")),
    cmap="RdBu_r",
    vmin=-1,
    vmax=1,
)
markers_pos = ax_cos.scatter(p, r, s=260, facecolors="none", edgecolors="k", lw=2)
markers_self = ax_cos.scatter(r, r, s=120, marker="x", c="k")
fig.colorbar(im, ax=ax_cos, label=r"cosine $\langle z_a, z_j \rangle$")
ax_cos.set_title("our batch: positives circled, self crossed")
for ax in (ax_roles, ax_cos):
    ax.axhline(N - 0.5, color="k", ls="--", lw=1)
    ax.axvline(N - 0.5, color="k", ls="--", lw=1)
    ax.set(xlabel="candidate j", ylabel="anchor a", xticks=range(2 * N), yticks=range(2 * N))
plt.tight_layout()
plt.show()
assert len(markers_pos.get_offsets()) == 2 * N and len(markers_self.get_offsets()) == 2 * N
assert torch.bincount(roles.flatten()).tolist() == [2 * N, 2 * N, 2 * N * (N - 1), 2 * N * (N - 1)]

# %% [markdown]
# In most rows the circled entry is the reddest: the anchor is more similar to its positive
# than to any negative. That is what a well-trained encoder does to real embeddings, and the
# loss is what pushes them there. Not every row is so tidy, though. Which anchors already rank
# their positive first?

# %% tags=["nbval-check-output"]
best_negative = cos.masked_fill(~negatives, float("-inf")).amax(dim=1)  # (2N,)
positive_cos = cos[r, p]  # (2N,)
ranked_first = (positive_cos > best_negative).tolist()
assert sum(ranked_first) < 2 * N  # this batch has hard cases, on purpose
print("positive cosine:     ", [round(v, 3) for v in positive_cos.tolist()])
print("best negative cosine:", [round(v, 3) for v in best_negative.tolist()])
print("positive ranked first for anchors", [a for a in range(2 * N) if ranked_first[a]])
hard = [a for a in range(2 * N) if not ranked_first[a]]
beat_3 = [j for j in range(2 * N) if negatives[3, j] and cos[3, j] > positive_cos[3]]
assert 3 in hard and beat_3 == [1, 5]
print(
    f"anchor 3: columns {beat_3} (both views of image 1, cosines "
    f"{', '.join(f'{cos[3, j].item():.3f}' for j in beat_3)}) beat its positive "
    f"({positive_cos[3].item():.3f})"
)

# %% [markdown]
# Anchor 3 is a **hard case**: both views of image 1 (columns 1 and 5, cosines printed above)
# are more similar to it than its own positive. Anchors 5 and 7 also rank a negative first, by a
# small margin. Keep them in mind: the loss will single them out.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1.1: the negative mask
#
# Build the $(2N, 2N)$ boolean mask yourself: `True` at $(a, j)$ when $j$ is a negative of
# anchor $a$, that is, $j \ne a$ and $j \ne \mathrm{pos}(a)$. Try it without a Python loop: compare a column
# of row indices with a row of column indices (broadcasting).

# %% exercise="1.1" tags=["exercise"]
def my_negative_mask(n: int) -> torch.Tensor:
    """(2n, 2n) bool mask of the negatives of every anchor of z = cat([z1, z2])."""
    # Your code here.
    raise NotImplementedError


# %% exercise="1.1" tags=["check"]
verdict = check("1.1", my_negative_mask, 5, expected=negative_mask(5))
negative_mask_fn = my_negative_mask if verdict.ok else negative_mask

# %% exercise="1.1" jupyter={"source_hidden": true} tags=["solution"]
def my_negative_mask(n: int) -> torch.Tensor:
    """(2n, 2n) bool mask of the negatives of every anchor of z = cat([z1, z2])."""
    a = torch.arange(2 * n)[:, None]  # (2n, 1) anchors
    j = torch.arange(2 * n)[None, :]  # (1, 2n) candidates
    return (j != a) & (j != (a + n) % (2 * n))  # (2n, 2n)


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. The loss
#
# Think of each anchor as a classification problem with $2N - 1$ classes: "which of the other
# rows is my positive?" The scores are the similarities $s_{a,j}$ and the probabilities are a
# softmax over all candidates $j \ne a$ (the anchor itself is not a candidate):
#
# $$ p_{a,j} = \frac{e^{s_{a,j}}}{\sum_{k \ne a} e^{s_{a,k}}}, \qquad j \ne a. \tag{1.2}$$
#
# The loss of anchor $a$ is the cross-entropy of the right answer $\mathrm{pos}(a)$. Splitting the
# denominator into the positive and the negatives, $U_a = \sum_{j \text{ negative}} e^{s_{a,j}}$,
# gives the form of the paper:
#
# $$ L_a = -\log p_{a, \mathrm{pos}(a)}
#        = -\log \frac{e^{s_{a,\mathrm{pos}(a)}}}{e^{s_{a,\mathrm{pos}(a)}} + U_a}
#        = -s_{a,\mathrm{pos}(a)} + \log\Big(e^{s_{a,\mathrm{pos}(a)}} + U_a\Big), \qquad
#    L = \frac{1}{2N} \sum_{a=1}^{2N} L_a. \tag{1.3}$$
#
# This is Eq. 1 of Yeh et al. (2021) with the negative sum $U_{i,k}$ of their Eq. 2. The paper
# sums over the $2N$ anchors; the package averages (`reduction="sum"` gives the paper's scale).
# $L_a$ is small when the positive takes most of the softmax, and $\log(2N - 1)$ when the
# softmax cannot tell the candidates apart.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### 4.1 Naive: `exp`, then `sum`
#
# Written exactly as the middle of $(1.3)$: exponentiate, pick the positive, sum the negatives
# (with the mask of Exercise 1.1), divide, take $-\log$.

# %%
def info_nce_naive(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-anchor InfoNCE (1.3) with exp and sum: fine at tau = 0.1, broken at small tau."""
    n = z.shape[0] // 2
    s = z @ z.T / tau  # (2N, 2N) Eq. (1.1)
    exp_s = torch.exp(s)  # (2N, 2N)
    rows = torch.arange(2 * n, device=z.device)  # (2N,)
    pos_term = exp_s[rows, positive_index(n, device=z.device)]  # (2N,) e^{s_a,pos(a)}
    U = torch.where(negative_mask_fn(n).to(z.device), exp_s, 0.0).sum(dim=1)  # (2N,) Eq. 2
    return -torch.log(pos_term / (pos_term + U))  # (2N,) Eq. (1.3)


# %% [markdown]
# Check against the package at $\tau = 0.1$, anchor by anchor (`reduction="none"` returns the
# $2N$ values $L_a$ in the order of the rows of $z$):

# %% tags=["nbval-check-output"]
naive = info_nce_naive(z, tau=0.1)  # (2N,)
reference = info_nce(z1, z2, tau=0.1, reduction="none")  # (2N,)
assert torch.allclose(naive, reference, rtol=1e-5, atol=1e-6)
print(f"tau = 0.1: naive mean {naive.mean().item():.4f}, info_nce {reference.mean().item():.4f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# Now lower the temperature to $\tau = 0.005$. The largest float32 number is about
# $3.4 \times 10^{38} \approx e^{88.7}$, and a positive with cosine $0.9$ has
# $s = 0.9 / 0.005 = 180$. Its exponential is `inf`, and `inf / (inf + U)` is not a number:

# %% tags=["nbval-check-output"]
float32_max = torch.finfo(torch.float32).max
s_small = z @ z.T / 0.005  # (2N, 2N)
naive_small = info_nce_naive(z, tau=0.005)  # (2N,)
print(f"float32 max = {float32_max:.3g} = exp({math.log(float32_max):.1f})")
s_positive = s_small[rows, pos]  # (2N,)
print(f"tau = 0.005: positive logits s_a,pos(a) = {[round(v, 1) for v in s_positive.tolist()]}")
print(f"tau = 0.005: their exp = {torch.exp(s_positive).tolist()}")
print(f"tau = 0.005: naive loss = {naive_small.tolist()}")
print(f"tau = 0.005: info_nce   {info_nce(z1, z2, tau=0.005).item():.4f}")
assert torch.isnan(naive_small).any() and torch.isfinite(info_nce(z1, z2, tau=0.005))

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### 4.2 Stable: `logsumexp`
#
# The fix is the right-hand side of $(1.3)$: never form $e^{s}$ on its own, only
# $\log \sum e^{s}$, which `torch.logsumexp` computes safely by first pulling out the largest
# entry $m$ of the row,
#
# $$ \log \sum_k e^{s_k} = m + \log \sum_k e^{s_k - m}, \qquad m = \max_k s_k. $$
#
# Every exponent $s_k - m$ is now $\le 0$, so nothing overflows, and the largest term is exactly
# $e^0 = 1$, so the sum cannot underflow to $0$ either. Since the positive plus the negatives
# are all candidates $j \ne a$, the denominator of $(1.3)$ is a `logsumexp` over the row with
# only the anchor itself removed. We remove it by setting $s_{a,a} = -\infty$, whose exponential
# is exactly $0$.

# %%
def info_nce_stable(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-anchor InfoNCE (1.3) as -s_pos + logsumexp over all j != a: stable at any tau."""
    n = z.shape[0] // 2
    s = z @ z.T / tau  # (2N, 2N) Eq. (1.1)
    rows = torch.arange(2 * n, device=z.device)  # (2N,)
    s_pos = s[rows, positive_index(n, device=z.device)]  # (2N,) s_{a,pos(a)}
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)  # (2N, 2N) the diagonal
    s_others = s.masked_fill(self_mask, float("-inf"))  # (2N, 2N) e^{-inf} = 0: a is no candidate
    return -s_pos + torch.logsumexp(s_others, dim=1)  # (2N,) Eq. (1.3)


# %% [markdown]
# Check: it agrees with the package at both temperatures, including the one where the naive
# version gave `nan`.

# %% tags=["nbval-check-output"]
for t in (0.1, 0.005):
    ours = info_nce_stable(z, tau=t)  # (2N,)
    assert torch.allclose(ours, info_nce(z1, z2, tau=t, reduction="none"), rtol=1e-5, atol=1e-5)
    print(
        f"tau = {t}: stable mean {ours.mean().item():.4f}, info_nce {info_nce(z1, z2, tau=t).item():.4f}"
    )

# %% [markdown] slideshow={"slide_type": "subslide"}
# Where exactly does the naive version break? Sweep the temperature. The naive loss is missing
# wherever it is not finite; the stable one carries on.

# %%
taus = np.geomspace(0.001, 1.0, 61)  # (61,)
naive_curve = np.array([info_nce_naive(z, tau=float(t)).mean().item() for t in taus])  # (61,)
stable_curve = np.array([info_nce(z1, z2, tau=float(t)).item() for t in taus])  # (61,)
breaks_at = taus[np.isfinite(naive_curve)].min()  # smallest tau where naive still works

fig, ax = plt.subplots(figsize=(6.5, 3.6))
ax.plot(taus, stable_curve, lw=3, color="0.75", label="logsumexp (info_nce)")
ax.plot(taus, naive_curve, "o", ms=3.5, color="tab:red", label="naive exp/sum, float32")
ax.axvline(breaks_at, color="tab:red", ls=":", lw=1)
ax.set(xscale="log", yscale="log", xlabel=r"temperature $\tau$", ylabel="loss L")
ax.set_title("The naive loss overflows at small temperature")
ax.legend()
plt.show()
assert np.isnan(naive_curve[taus < 0.005]).all() and np.isfinite(stable_curve).all()
print(f"naive float32 loss is finite only for tau >= {breaks_at:.4f}")

# %% [markdown]
# The threshold is where the largest similarity that enters the sum, $\max_{j \ne a} \langle
# z_a, z_j \rangle / \tau$, passes $88.7$.
#
# **Half precision.** Mixed-precision training uses two 16-bit formats, and they fail
# differently. float16 overflows far sooner: its largest number is $65504 \approx e^{11.1}$, so a
# cosine of $0.6$ at $\tau = 0.05$ is already too much. bfloat16 keeps float32's exponent range
# (largest number $\approx e^{88.7}$ again), so it overflows no sooner; its weakness is
# *precision*: 8 significant bits, about 3 significant decimal digits, so logits that differ
# in the third digit become equal. The cell shows both.

# %% tags=["nbval-check-output"]
for dtype in (torch.float32, torch.float16, torch.bfloat16):
    info = torch.finfo(dtype)
    print(
        f"{str(dtype):15} largest {info.max:.4g} = exp({math.log(info.max):.1f}), "
        f"relative spacing eps = {info.eps:.2g}"
    )
e12 = torch.tensor(math.exp(12.0))  # e^12 = 162754.8 in float32
print(f"e^12 in float16: {e12.half().item()}, in bfloat16: {e12.bfloat16().item():.0f}")
logits = torch.tensor([0.838, 0.840]) / 0.1  # two candidates whose cosines differ by 0.002
print(
    f"logits {[round(v, 4) for v in logits.tolist()]} at tau = 0.1 "
    f"become {logits.bfloat16().tolist()} in bfloat16"
)
assert math.isinf(e12.half().item()) and math.isfinite(e12.bfloat16().item())
assert logits.bfloat16()[0] == logits.bfloat16()[1]

# %% [markdown]
# This is one reason the package computes the loss in float32 whatever the input dtype, and
# always with `logsumexp`: `logsumexp` removes the overflow, float32 the loss of precision.

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### 4.3 A loop that reads like the paper
#
# Vectorised code is fast but hides the indices. Here is Eq. $(1.3)$ once more, as a loop over
# the paper's indices: image $i \in [1, N]$, view $k \in \{1, 2\}$, and for the negative sum
# $U_{i,k}$ of Eq. 2 every view $l$ and every other image $j \ne i$. Python floats are float64,
# which overflow only past $e^{709}$, so the naive `exp` is safe here at ordinary temperatures.

# %%
def info_nce_loop(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """InfoNCE, Eqs. (1)-(2) of Yeh et al. written as loops, averaged over the 2N anchors."""
    n = z1.shape[0]
    views = {1: z1.tolist(), 2: z2.tolist()}

    def sim(x, y):  # <x, y> / tau
        return sum(xi * yi for xi, yi in zip(x, y)) / tau

    total = 0.0
    for k in (1, 2):
        for i in range(n):
            positive = math.exp(sim(views[1][i], views[2][i]))  # e^{<z_i^(1), z_i^(2)> / tau}
            U = sum(
                math.exp(sim(views[k][i], views[l][j])) for l in (1, 2) for j in range(n) if j != i
            )  # Eq. 2
            total += -math.log(positive / (positive + U))  # Eq. 1
    return total / (2 * n)


# %% [markdown]
# Check against the package, in float64 so that the comparison can be tight:

# %% tags=["nbval-check-output"]
z1_64 = F.normalize(z1.double().cpu(), dim=1)  # (N, D) the same batch in float64
z2_64 = F.normalize(z2.double().cpu(), dim=1)  # (N, D)
loop_value = info_nce_loop(z1_64, z2_64, tau=0.1)
package_value = info_nce(z1_64, z2_64, tau=0.1).item()
assert math.isclose(loop_value, package_value, rel_tol=1e-10)
print(f"loop {loop_value:.6f}, info_nce {package_value:.6f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1.2: one anchor's loss, with a stable loop
#
# Write `info_nce_one_anchor(z, a, tau)`: the loss $L_a$ of $(1.3)$ for anchor `a` of the
# stacked batch `z` of shape $(2N, D)$, as a plain loop over the candidates $j \ne a$, and
# stable at small $\tau$: subtract the row's largest similarity before exponentiating, as
# `logsumexp` does. Return a float (or a 0-dim tensor). The check uses $\tau = 0.005$, where the
# naive version fails.

# %% exercise="1.2" tags=["exercise"]
def info_nce_one_anchor(z: torch.Tensor, a: int, tau: float) -> float:
    """L_a of Eq. (1.3) for anchor a of z = cat([z1, z2]) (2N, D), by a stable loop over j != a."""
    # Your code here.
    raise NotImplementedError


# %% exercise="1.2" tags=["check"]
z_64 = torch.cat([z1_64, z2_64])  # (2N, D)
expected = info_nce(z1_64, z2_64, tau=0.005, reduction="none")[5]  # L_5
verdict = check("1.2", info_nce_one_anchor, z_64, 5, 0.005, expected=expected)
one_anchor_fn = (
    info_nce_one_anchor
    if verdict.ok
    else (lambda z, a, tau: info_nce(*z.chunk(2), tau=tau, reduction="none")[a])
)

# %% exercise="1.2" jupyter={"source_hidden": true} tags=["solution"]
def info_nce_one_anchor(z: torch.Tensor, a: int, tau: float) -> float:
    """L_a of Eq. (1.3) for anchor a of z = cat([z1, z2]) (2N, D), by a stable loop over j != a."""
    two_n = z.shape[0]
    positive = (a + two_n // 2) % two_n  # pos(a)
    logits = {j: float(z[a] @ z[j]) / tau for j in range(two_n) if j != a}  # s_{a,j}, j != a
    m = max(logits.values())  # the largest logit: every exponent below is <= 0
    log_denominator = m + math.log(sum(math.exp(v - m) for v in logits.values()))
    return -logits[positive] + log_denominator


# %% [markdown]
# With whichever function passed, the per-anchor losses of our batch at $\tau = 0.005$ (the
# package's float64 numbers, not the naive `nan`):

# %% tags=["nbval-check-output"]
per_anchor = [float(one_anchor_fn(z_64, a, 0.005)) for a in range(2 * N)]
assert np.allclose(per_anchor, info_nce(z1_64, z2_64, tau=0.005, reduction="none").numpy())
print("L_a at tau = 0.005:", [round(v, 3) for v in per_anchor])

# %% [markdown]
# At such a sharp temperature the anchors that rank their positive first pay practically
# nothing, while an anchor whose best negative beats its positive pays about the gap in
# cosine divided by $\tau$; for anchor 3 the cell below computes it.

# %% tags=["nbval-check-output"]
gap_3 = (cos[3][negatives[3]].max() - positive_cos[3]).item()  # best negative minus positive
print(f"anchor 3: (best negative - positive) / tau = {gap_3:.3f} / 0.005 = {gap_3 / 0.005:.1f}")
print(f"          L_3 = {per_anchor[3]:.1f}")
assert abs(per_anchor[3] - gap_3 / 0.005) < 1.0

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Closed forms
#
# A loss you can compute by hand in a few special cases is a loss you can test. Two such cases
# pin InfoNCE from both ends.
#
# **All embeddings identical** (notebook 00). Every $s_{a,j}$ is the same, the softmax $(1.2)$
# is uniform over the $2N - 1$ candidates, and $L = \log(2N - 1)$ at every $\tau$. This is the
# loss of an encoder that has collapsed to a single point: it has learnt nothing.

# %% tags=["nbval-check-output"]
for n in (2, 4, 32):
    ones = torch.ones(n, D, dtype=torch.float64)  # (n, D)
    value = info_nce(ones, ones, tau=0.1).item()
    assert math.isclose(value, math.log(2 * n - 1), rel_tol=1e-12)
    print(f"N = {n:2d}: info_nce {value:.4f} = log(2N - 1) {math.log(2 * n - 1):.4f}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 1.3: perfect positives, orthogonal negatives
#
# Now the opposite extreme. Take $N \le D$ and let both views be the first $N$ rows of the
# identity matrix: `z1 = z2 = torch.eye(D)[:N]`. Each positive pair is identical (cosine $1$)
# and every negative is orthogonal to its anchor (cosine $0$). Derive $L$ from $(1.3)$ and write
# `infonce_aligned_orthogonal(n, tau)`. Hint: what are $s_{a,\mathrm{pos}(a)}$ and $U_a$ here?

# %% exercise="1.3" tags=["exercise"]
def infonce_aligned_orthogonal(n: int, tau: float) -> float:
    """InfoNCE of z1 = z2 = eye(D)[:n]: identical positives, orthogonal negatives."""
    # Your code here.
    raise NotImplementedError


# %% exercise="1.3" tags=["check"]
eye_views = torch.eye(D, dtype=torch.float64)[:N]  # (N, D)
verdict = check(
    "1.3", infonce_aligned_orthogonal, N, 0.2, expected=info_nce(eye_views, eye_views, tau=0.2)
)
aligned_fn = (
    infonce_aligned_orthogonal
    if verdict.ok
    else (lambda n, tau: math.log1p((2 * n - 2) * math.exp(-1 / tau)))
)

# %% exercise="1.3" jupyter={"source_hidden": true} tags=["solution"]
def infonce_aligned_orthogonal(n: int, tau: float) -> float:
    """InfoNCE of z1 = z2 = eye(D)[:n]: identical positives, orthogonal negatives."""
    # s_{a,pos(a)} = 1 / tau and each of the 2n - 2 negatives has s = 0, so U_a = 2n - 2:
    # L_a = -1/tau + log(e^{1/tau} + 2n - 2) = log(1 + (2n - 2) e^{-1/tau}).
    return math.log1p((2 * n - 2) * math.exp(-1 / tau))


# %% [markdown] slideshow={"slide_type": "subslide"}
# The two closed forms frame what the temperature does. For identical embeddings the loss is
# stuck at $\log(2N - 1)$. For the ideal geometry it falls to $0$ as $\tau \to 0$: a sharp
# softmax puts all its weight on the positive once the positive is the most similar candidate.
# Our made-up batch lies in between, and its loss climbs again at small $\tau$: a sharp
# softmax also punishes hard, and anchors 3, 5 and 7 rank a negative above their
# positive (at $\tau = 0.005$ we measured $L_3$ above).

# %%
taus = np.geomspace(0.02, 2.0, 50)  # (50,)
curves = {
    "identical (closed form)": np.full_like(taus, math.log(2 * N - 1)),
    "our batch (info_nce)": np.array([info_nce(z1_64, z2_64, tau=float(t)).item() for t in taus]),
    "aligned, orthogonal negatives": np.array([aligned_fn(N, float(t)) for t in taus]),
}
fig, ax = plt.subplots(figsize=(8.5, 3.6), layout="constrained")
for label, values in curves.items():
    ax.plot(taus, values, lw=2, label=label)
ax.plot(
    taus[::7],
    [info_nce(eye_views, eye_views, tau=float(t)).item() for t in taus[::7]],
    "k.",
    ms=8,
    label="info_nce on eye(D)[:N]",
)
ax.set(
    xscale="log",
    xlabel=r"temperature $\tau$",
    ylabel="loss L",
    title=f"InfoNCE against temperature, N = {N}",
)
ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the curves
plt.show()
assert (curves["aligned, orthogonal negatives"] <= curves["our batch (info_nce)"] + 1e-12).all()
assert (curves["our batch (info_nce)"] <= curves["identical (closed form)"] + 1e-12).all()

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# * A batch of $N$ images gives $2N$ embeddings; each row $a$ of $z$ is an anchor with one
#   positive $\mathrm{pos}(a) = (a + N) \bmod 2N$ and $2N - 2$ negatives, same-view and cross-view.
# * $s = z z^\top / \tau$ $(1.1)$; the softmax $(1.2)$ runs over every candidate but the anchor;
#   $L_a = -s_{a,\mathrm{pos}(a)} + \log\big(e^{s_{a,\mathrm{pos}(a)}} + U_a\big)$ $(1.3)$, Eqs. 1 and 2 of Yeh et al.
# * Never exponentiate similarities on their own: at $\tau = 0.005$ float32 overflows. Use
#   `logsumexp`, with the anchor masked by $-\infty$.
# * Closed forms test any implementation: $\log(2N - 1)$ for identical embeddings, and
#   $\log\big(1 + (2N - 2)e^{-1/\tau}\big)$ for identical positives with orthogonal negatives.
#
# **Exercises in this notebook**
#
# * 1.1 The negative mask.
# * 1.2 One anchor's loss, with a stable loop.
# * 1.3 Perfect positives, orthogonal negatives (a closed form).
#
# Next: **02 The gradient of InfoNCE**. You will differentiate $(1.3)$ by hand and find the factor
# that decides how hard each anchor learns.
