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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dcl-teach/dcl-teach/blob/v0.1.0/notebooks/00_start_here.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/dcl-teach/dcl-teach/v0.1.0?urlpath=lab/tree/notebooks/00_start_here.ipynb)

# %% [markdown] slideshow={"slide_type": "slide"}
# # 00 · Start here
#
# Welcome! This course takes you from the InfoNCE loss, the workhorse of contrastive
# self-supervised learning (SimCLR and friends), to **Decoupled Contrastive Learning** (DCL and
# its weighted variant DCLW) of Yeh et al. (2021, arXiv 2110.06848). On the way you will write
# every loss yourself, derive its gradient by hand, and check each step by running code.
#
# **In this notebook you will**
#
# 1. see what the seven notebooks teach, in which order, and which part of the `dcl_teach`
#    package each one leans on;
# 2. learn the three ways to run the course (JupyterLab, Binder, Colab);
# 3. meet the notation used everywhere, side by side with the paper's symbols;
# 4. check your environment in about two minutes;
# 5. learn how the exercises work, and solve two warm-up exercises.

# %% slideshow={"slide_type": "skip"} tags=["colab-install"]
# On Google Colab only: install this course's package at the version of this notebook.
import sys

if "google.colab" in sys.modules:
    import subprocess

    spec = "dcl-teach @ git+https://github.com/dcl-teach/dcl-teach@v0.1.0"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

# %% slideshow={"slide_type": "skip"}
import math
import platform

import ipywidgets as widgets
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import dcl_teach
from dcl_teach.exercises import check
from dcl_teach.losses import info_nce

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
torch.manual_seed(0)  # every random tensor below also takes its own seeded generator
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"dcl_teach {dcl_teach.__version__} on {device}")

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. What the course teaches, and in which order
#
# Each notebook builds on the one before. A notebook is a *lesson*: it derives a formula, writes
# a first naive or loop version of it, and then checks that version against the `dcl_teach`
# package, the *tool* you would use in your own projects.
#
# | Notebook | What you learn | Leans on |
# |---|---|---|
# | **00 Start here** | the map of the course, the notation, how exercises work, an environment check | `dcl_teach.exercises` |
# | **01 InfoNCE from scratch** | the $2N \times 2N$ similarity matrix, positives and negatives, a numerically stable loss, closed forms to test against | `dcl_teach.masks`, `dcl_teach.losses.info_nce` |
# | **02 The gradient of InfoNCE** | the gradient derived by hand, the coupling factor $q_B$ that multiplies all of it, and why learning stalls when $q_B \approx 0$ | `dcl_teach.grads` (`info_nce_grad`, `coupling`) |
# | **03 $q_B$, batch size and temperature** | how the batch size and $\tau$ shift the distribution of $q_B$, with an interactive explorer | `dcl_teach.grads.coupling`, `dcl_teach.synthetic`, `dcl_teach.widgets` |
# | **04 Decoupled contrastive learning (DCL)** | drop the positive from the denominator and $q_B$ leaves the gradient; why the loss can be negative, and its floor | `dcl_teach.losses.dcl`, `dcl_teach.grads.dcl_grad`, `dcl_teach.fused` |
# | **05 Weighted DCL (DCLW)** | a von Mises-Fisher weight that lets hard positives pull harder | `dcl_teach.losses.dclw`, `dcl_teach.grads.vmf_weights` |
# | **06 Train it yourself** | SimCLR-style training with InfoNCE, DCL and DCLW, judged by kNN accuracy | `dcl_teach.data`, `augment`, `models`, `train`, `evaluate` |
# | **07 Geometry: alignment, uniformity and the hypersphere** | DCL split into alignment and uniformity, free points on the sphere, $q_B = 1 - e^{-L}$, the mutual-information bound and its cap | `dcl_teach.geometry` |
# | **08 Beyond the batch: memory queues** | extra negatives from a queue of past embeddings, $q_B$ against the queue length $K$, why MoCo's queue pushes $q_B$ to 1 | `dcl_teach.queue`, `dcl_teach.losses` (`negatives=`) |
# | **09 Spot the bug** | six real bugs of contrastive losses, and the test that catches each | `dcl_teach.bugs` |
#
# Notebooks 00 to 05 run in well under a minute each on a laptop CPU. Notebook 06 trains
# small networks; it runs on a CPU and is faster on a GPU.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. How to run the course
#
# **On your own machine, with JupyterLab.** From a copy of the repository:
#
# ```bash
# pip install -e ".[course]"
# jupyter lab notebooks/
# ```
#
# If PyTorch is not installed yet, install it first as described on pytorch.org: a CPU build is
# all that notebooks 00 to 05 need.
#
# **In the browser, with Binder.** The Binder badge (in the README and at the top of each
# notebook) starts JupyterLab with everything installed. Nothing to install, but the session is
# temporary: download any notebook you want to keep.
#
# **In the browser, with Google Colab.** The Colab badge opens a notebook in Colab. The first
# code cell of every notebook installs the course package, and it does so *only* on Colab
# (elsewhere it does nothing). A GPU runtime helps in notebook 06 only.
#
# Wherever you run it, *Run All* works from top to bottom, even with exercises left unsolved.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Notation
#
# One notation, fixed here and used in every notebook and in the package's docstrings. A batch
# holds $N$ images (the **batch size** $N$ counts pairs); each is augmented twice, giving two
# *views*, so $2N$ embeddings, and an encoder maps every view to an embedding of dimension $D$.
#
# | Symbol (code) | Meaning | Shape | Yeh et al. (2021) |
# |---|---|---|---|
# | $z^{(1)}, z^{(2)}$ (`z1`, `z2`) | embeddings of the two views; row $i$ of `z2` is the positive of row $i$ of `z1` | $(N, D)$ | $z_i^{(1)}, z_i^{(2)}$ |
# | $z$ (`z`) | both views stacked, `cat([z1, z2])`; row $a$ is *anchor* $a$ | $(2N, D)$ | (the $2N$ samples) |
# | $a$, $\mathrm{pos}(a)$ | an anchor, and the row of its positive, $\mathrm{pos}(a) = (a + N) \bmod 2N$ | index | $i$ with view $k$ |
# | $s$ (`s`) | similarities $s_{a,j} = \langle z_a, z_j \rangle / \tau$ | $(2N, 2N)$ | $\langle z_i, z_j \rangle / \tau$ |
# | $\tau$ (`tau`) | temperature | scalar | $\tau$ |
# | $p$ (`p`) | softmax weight of an entry in row $a$'s denominator | $(2N, 2N)$ | (no symbol) |
# | $\mathcal{N}(a)$ | the $2N - 2$ negatives of anchor $a$: every row but $a$ and $\mathrm{pos}(a)$ | set | $j \ne i$, both views $l$ |
# | $U_a$ | sum of $e^{s_{a,j}}$ over the negatives $j \in \mathcal{N}(a)$ | $(2N,)$ | $U_{i,k}$ (Eq. 2) |
# | $p^-$ | softmax over the negatives alone, $e^{s_{a,j}} / U_a$ (from notebook 02) | $(2N, 2N)$ | (no symbol) |
# | $q$ (`q`) | coupling factor $q_B$: one minus the weight $p_{a,\mathrm{pos}(a)}$ of the positive | $(2N,)$ | $q_{B,i}^{(k)}$ (Eq. 4) |
# | $w$ (`w`) | DCLW weight of a positive pair | $(N,)$ | $w(z_i^{(1)}, z_i^{(2)})$ |
# | $\sigma$ (`sigma`) | width of the DCLW weighting | scalar | $\sigma$ |
#
# A few remarks that will save you confusion later:
#
# * Embeddings are **L2-normalised** (each row has length 1), so $\langle z_a, z_j \rangle$ is a
#   cosine similarity in $[-1, 1]$ and $s_{a,j} \in [-1/\tau, 1/\tau]$.
# * The letter $p$ is kept for softmax weights ($p_{a,j}$, and $p^-_{a,j}$ over the negatives
#   alone); the index of the positive is spelt out, $\mathrm{pos}(a)$, so the weight *of the
#   positive* reads $p_{a,\mathrm{pos}(a)}$.
# * Each anchor has one positive and $2N - 2$ negatives: both views of every other image.
# * The package **averages** the loss over the $2N$ anchors; the paper **sums** it. That changes
#   the scale only (`reduction="sum"` gives the paper's number).
# * Equations of the course are numbered by notebook, $(1.1)$, $(2.4)$, ...; equations of the
#   paper are cited as "Eq. 4 of Yeh et al.".

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. A two-minute environment check
#
# First, the versions of the four libraries the course needs. (Your numbers may differ from
# the ones saved in this notebook; the assert only asks for recent enough versions.)

# %% tags=["nbval-ignore-output"]
def major_minor(version: str) -> tuple[int, int]:
    """'2.4.1+cpu' -> (2, 4)."""
    major, minor = version.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()))


versions = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "numpy": np.__version__,
    "matplotlib": matplotlib.__version__,
    "ipywidgets": widgets.__version__,
}
minimum = {
    "python": (3, 10),
    "torch": (2, 2),
    "numpy": (1, 24),
    "matplotlib": (3, 7),
    "ipywidgets": (8, 0),
}
too_old = [name for name, v in versions.items() if major_minor(v) < minimum[name]]
assert not too_old, f"please upgrade: {too_old}"
print(", ".join(f"{name} {v}" for name, v in versions.items()))

# %% [markdown] slideshow={"slide_type": "subslide"}
# Next, one tiny loss call whose answer we know in advance. Give InfoNCE a batch in which all
# $2N$ embeddings are the *same* vector. Every similarity is then equal, so the softmax over the
# $2N - 1$ candidates of an anchor is uniform, the positive gets weight $1/(2N - 1)$, and the
# loss is
#
# $$L = -\log \frac{1}{2N - 1} = \log(2N - 1),$$
#
# whatever the temperature. (Notebook 01 explains every piece of this; here it is only a
# test that the package runs.)

# %% tags=["nbval-check-output"]
N = 8
z_same = torch.ones(N, 3, device=device)  # (N, D) all 2N embeddings identical
loss = info_nce(z_same, z_same, tau=0.1)
assert math.isclose(loss.item(), math.log(2 * N - 1), rel_tol=1e-6)
print(f"info_nce = {loss.item():.4f}, log(2N - 1) = {math.log(2 * N - 1):.4f} for N = {N}")

# %% [markdown] slideshow={"slide_type": "subslide"}
# The same check for many batch sizes and two temperatures, as a picture. The dots (the
# package) must sit on the line (the closed form), and the two temperatures must agree.

# %%
sizes = np.arange(1, 65)  # N = 1, ..., 64
closed = np.log(2 * sizes - 1)  # (64,)
measured = {
    tau: np.array([info_nce(torch.ones(n, 3), torch.ones(n, 3), tau=tau).item() for n in sizes])
    for tau in (0.1, 1.0)
}
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(sizes, closed, color="0.3", lw=2, label=r"$\log(2N-1)$")
ax.plot(sizes, measured[0.1], "o", ms=4, label=r"info_nce, $\tau = 0.1$")
ax.plot(sizes, measured[1.0], "x", ms=4, label=r"info_nce, $\tau = 1$")
ax.set(xlabel="pairs in the batch, N", ylabel="loss", title="Identical embeddings")
ax.legend()
plt.show()
assert all(np.allclose(m, closed, rtol=1e-5, atol=1e-6) for m in measured.values())

# %% [markdown] slideshow={"slide_type": "subslide"}
# Last, a slider: drag it and the printed line should follow. If you see a slider, widgets
# work in your setup (notebook 03 uses them). If you see only text such as
# `interactive(children=...)`, widgets are not enabled in your Jupyter: run the course in
# JupyterLab 4, Binder or Colab.

# %% tags=["nbval-ignore-output"]
def show_identical_batch(n: int = 8) -> None:
    """Print the loss of n identical pairs next to its closed form."""
    z = torch.ones(n, 3)  # (n, D)
    print(
        f"N = {n}: info_nce = {info_nce(z, z).item():.4f}, log(2N - 1) = {math.log(2 * n - 1):.4f}"
    )


_ = widgets.interact(
    show_identical_batch, n=widgets.IntSlider(value=8, min=1, max=64, description="N")
)

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. How the exercises work
#
# Every exercise is three cells:
#
# 1. **a stub** for you to fill in. Until you do, it raises `NotImplementedError`;
# 2. **a self-check** that runs your function, compares it with the `dcl_teach` reference and
#    prints a verdict: *correct*, *not yet implemented*, *not yet right* (with which entries
#    differ and by how much), or the error your code raised. Whatever the verdict, the notebook
#    carries on, with your function if it is correct and with the reference otherwise;
# 3. **a solution**, hidden (click the collapsed cell to reveal it). Try first!
#
# The self-check is `dcl_teach.exercises.check`. Here it is with a deliberately wrong answer,
# so you know what a helpful "not yet right" looks like:

# %% tags=["nbval-check-output"]
demo = check(
    "0.0", lambda x: x**2, torch.tensor([1.0, 2.0, 3.0]), expected=torch.tensor([2.0, 4.0, 6.0])
)
assert demo.status == "wrong"

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 0.1: the cosine similarity matrix
#
# Contrastive losses compare every embedding with every other one by cosine similarity,
#
# $$\cos(x, y) = \frac{\langle x, y \rangle}{\lVert x \rVert \, \lVert y \rVert}.$$
#
# Write `cosine_matrix(x)` that takes $M$ vectors as the rows of an $(M, D)$ tensor and returns
# the $(M, M)$ matrix of all their pairwise cosine similarities. Hint: divide each row by its
# length first; then a single matrix product does the rest. No loops needed.

# %% exercise="0.1" tags=["exercise"]
def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities of the rows of x: (M, D) -> (M, M)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="0.1" tags=["check"]
x_demo = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
expected = F.cosine_similarity(x_demo[:, None, :], x_demo[None, :, :], dim=-1)  # (6, 6)
verdict = check("0.1", cosine_matrix, x_demo, expected=expected)
cosine_fn = (
    cosine_matrix if verdict.ok else (lambda x: F.normalize(x, dim=1) @ F.normalize(x, dim=1).T)
)

# %% exercise="0.1" jupyter={"source_hidden": true} tags=["solution"]
def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """All pairwise cosine similarities of the rows of x: (M, D) -> (M, M)."""
    x_unit = x / x.norm(dim=1, keepdim=True)  # (M, D) rows of length 1
    return x_unit @ x_unit.T  # (M, M)


# %% [markdown] slideshow={"slide_type": "fragment"}
# Whichever function we carry on with, its diagonal is all ones (each vector is perfectly
# similar to itself) and the matrix is symmetric:

# %%
C = cosine_fn(x_demo)  # (6, 6)
assert torch.allclose(C.diagonal(), torch.ones(6, dtype=torch.float64)) and torch.allclose(C, C.T)
print(f"diagonal all 1: True, symmetric: True, range [{C.min().item():.3f}, {C.max().item():.3f}]")

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 0.2: a collapsed encoder that flips one view
#
# The closed form above belongs to an encoder that maps everything to one point. Here is a
# worse one: it maps every first view to a unit vector $u$ and every second view to $-u$. Each
# positive pair now points in *opposite* directions. Before you write any code, work out on paper,
# for one anchor of the first view:
#
# * the cosine to its positive, to each of the $N - 1$ other first views (same-view negatives),
#   and to each of the $N - 1$ other second views (cross-view negatives);
# * the loss $L_a = -s_{a,\mathrm{pos}(a)} + \log \sum_{j \ne a} e^{s_{a,j}}$ with
#   $s_{a,j} = \langle z_a, z_j \rangle / \tau$, simplified as far as you can.
#
# Then write `infonce_opposite_views(n, tau)`. Does $\tau$ matter now? Predict: is the loss
# above or below $\log(2N - 1)$, and what happens as $\tau$ grows? A cell below tests your
# prediction.

# %% exercise="0.2" tags=["exercise"]
def infonce_opposite_views(n: int, tau: float) -> float:
    """InfoNCE of n pairs whose first views are all u and second views all -u (|u| = 1)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="0.2" tags=["check"]
u = F.normalize(torch.randn(1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
flipped = info_nce(u.repeat(5, 1), -u.repeat(5, 1), tau=0.5)  # N = 5, tau = 0.5
verdict = check("0.2", infonce_opposite_views, 5, 0.5, expected=flipped)
opposite_fn = (
    infonce_opposite_views
    if verdict.ok
    else (lambda n, tau: 2 / tau + math.log((n - 1) + n * math.exp(-2 / tau)))
)

# %% exercise="0.2" jupyter={"source_hidden": true} tags=["solution"]
def infonce_opposite_views(n: int, tau: float) -> float:
    """InfoNCE of n pairs whose first views are all u and second views all -u (|u| = 1)."""
    # Anchor u: positive -u (cosine -1, s = -1/tau), n - 1 same-view negatives u (s = +1/tau),
    # n - 1 cross-view negatives -u (s = -1/tau). So, multiplying inside the log by e^{-1/tau},
    # L_a = 1/tau + log(n e^{-1/tau} + (n - 1) e^{1/tau}) = 2/tau + log(n - 1 + n e^{-2/tau}).
    # Every anchor (either view) sees the same picture, so L is this value.
    return 2 / tau + math.log((n - 1) + n * math.exp(-2 / tau))


# %% [markdown] slideshow={"slide_type": "fragment"}
# Test your prediction with the function we carry on with: for $N = 8$ the flipped encoder
# against the collapsed one, $\log(2N - 1)$, at several temperatures, and the same loss
# computed by `info_nce` on the actual embeddings.

# %% tags=["nbval-check-output"]
n_demo = 8
ones_u = F.normalize(torch.ones(n_demo, 3, dtype=torch.float64), dim=1)  # (N, D) all equal to u
for t in (0.1, 1.0, 10.0, 100.0):
    ours = float(opposite_fn(n_demo, t))
    assert math.isclose(ours, info_nce(ones_u, -ones_u, tau=t).item(), rel_tol=1e-9)
    assert ours > math.log(2 * n_demo - 1)
    print(
        f"tau = {t:5}: flipped views {ours:8.4f}  >  log(2N - 1) = {math.log(2 * n_demo - 1):.4f}"
    )

# %% [markdown]
# Opposite positives cost more than a collapse, and the price grows like $2/\tau$ as the
# temperature falls: a sharp softmax punishes a confident wrong answer hard. As $\tau$ grows,
# every $s_{a,j}$ shrinks towards $0$, the softmax becomes uniform again, and the loss falls back
# to $\log(2N - 1)$.


# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# * The course runs 00 → 06: InfoNCE (01), its gradient and the coupling factor $q_B$ (02),
#   how batch size and temperature move $q_B$ (03), DCL (04), DCLW (05), and training (06).
# * Each notebook derives a formula, writes it by hand, and checks it against `dcl_teach`.
# * The notation table above is the one used everywhere; keep it open in a tab if it helps.
# * A batch of identical embeddings has InfoNCE loss $\log(2N - 1)$ at any temperature, the
#   first of several closed forms we will use to test code.
#
# **Exercises in this notebook**
#
# * 0.1 The cosine similarity matrix.
# * 0.2 A collapsed encoder that flips one view.
#
# Next: **01 InfoNCE from scratch**, where you build the loss one piece at a time.
