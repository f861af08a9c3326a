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
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/dcl-teach/dcl-teach/blob/v0.1.0/notebooks/09_spot_the_bug.ipynb)
# [![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/dcl-teach/dcl-teach/v0.1.0?urlpath=lab/tree/notebooks/09_spot_the_bug.ipynb)

# %% [markdown] slideshow={"slide_type": "slide"}
# # 09 · Spot the bug
#
# A contrastive loss that is wrong rarely crashes. It returns a finite number, the number goes
# down during training, and the encoder learns *something*. The six losses in this notebook
# are all like that. Each one is a real mistake: one shipped for three years in a popular
# library, others sit in public code or are one keystroke away from the correct code of
# notebooks 01 and 04. Your job in each section is the one a reviewer has: read the code,
# find the mistake, and then **write the test that catches it**, using only the tools the
# course taught: closed forms, invariances, autograd against the analytic gradient, and what
# you know about the values DCL can take.
#
# **Learning goals.** By the end you can
#
# 1. find six kinds of contrastive-loss bugs in code: aggregation (9.1), masking (9.2),
#    normalisation (9.3), distributed gradients (9.4), the positive's index (9.5) and the
#    reduction (9.6);
# 2. say for each which tool catches it and, as important, which tools are blind to it;
# 3. write a test as a function `test(loss) -> bool` that fails a broken loss and passes
#    the correct one;
# 4. predict what a summed loss does to SGD, and which learning rate undoes it.

# %% slideshow={"slide_type": "skip"} tags=["colab-install"]
# On Google Colab only: install this course's package at the version of this notebook.
import sys

if "google.colab" in sys.modules:
    import subprocess

    spec = "dcl-teach @ git+https://github.com/dcl-teach/dcl-teach@v0.1.0"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)

# %% slideshow={"slide_type": "skip"}
import inspect
import math
import re
from functools import partial

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import dcl_teach
from dcl_teach.bugs import (
    BROKEN,
    all_gather_own_rows,
    all_gather_plain,
    dcl_eps_mask,
    dcl_forgot_normalize,
    dcl_positive_on_diagonal,
    dcl_reference,
    dcl_summed,
    dcl_two_logsumexps,
    dcl_two_ranks,
    dcl_two_ranks_all_gather,
    grade_test,
    passes_anti_aligned,
    passes_below_zero,
    passes_bounds,
    passes_gradient,
    passes_identical,
    passes_rescaling,
    passes_symmetries,
    soft_masked_dcl,
)
from dcl_teach.exercises import check
from dcl_teach.grads import dcl_grad
from dcl_teach.losses import dcl, info_nce
from dcl_teach.masks import negative_mask

# %matplotlib inline
# %config InlineBackend.figure_formats = ["png"]
torch.manual_seed(0)  # every random tensor below also takes its own seeded generator
device = torch.device("cpu")  # small float64 batches: a CPU is plenty, and prints stay exact
print(f"dcl_teach {dcl_teach.__version__} on {device}")


def unit_batch(n: int, d: int, *, seed: int, noise: float = 0.8):
    """Two views of n random pairs on the unit sphere, float64."""
    g = torch.Generator().manual_seed(seed)
    z1 = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)  # (N, D)
    z2 = F.normalize(z1 + noise * torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    return z1, z2


def show_code(fn) -> None:
    """Print a function's code without its docstring: the code as a reviewer sees it."""
    source = inspect.getsource(fn)
    print(re.sub(r'\n    r?""".*?"""\n', "\n", source, count=1, flags=re.S))


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 1. How to test a loss you cannot trust
#
# Every loss below has the signature of the package's DCL, `loss(z1, z2, *, tau, normalize)`,
# and returns the mean of (4.1) over the $2N$ anchors, or claims to. The correct one is
# `dcl_reference`. A **test** here is a function `test(loss) -> bool` that returns `True` when
# `loss` behaves as DCL must. Each exercise runs your test twice: on the broken loss, where it
# must return `False`, and on `dcl_reference`, where it must return `True`. A test that fails
# everything is as useless as one that passes everything.
#
# One rule: **your test may not call `dcl_teach.losses`**. Comparing with a reference
# implementation is a fine test when you have one you trust, but the interesting case is the
# one where the code under test *is* the reference. Build your batches so that you know the
# answer from the maths: closed forms (notebooks 01 and 04), invariances, the analytic
# gradient `dcl_teach.grads.dcl_grad` (4.2), the bounds of the loss (4.3).
#
# A first test, to see the shape: DCL does not care which view is called "first", nor in which
# order the pairs come. Here is that test, as `dcl_teach.bugs` writes it:

# %%
show_code(passes_symmetries)

# %% [markdown]
# and here it is, run on the correct loss and on all six broken ones:

# %% tags=["nbval-check-output"]
print(f"{'loss':22} passes the symmetry test")
for name, loss in {"dcl_reference": dcl_reference, **BROKEN}.items():
    print(f"{name:22} {passes_symmetries(loss)}")
assert all(passes_symmetries(loss) for loss in BROKEN.values())

# %% [markdown]
# It passes all of them. Nothing is wrong with the test: swapping views and permuting pairs
# are true symmetries of DCL. But every bug below keeps them, so this test catches none. A
# test only earns its place if some plausible mistake breaks the property it checks. That is
# the question to ask in each section: *what property does this particular mistake break?*

# %% [markdown] slideshow={"slide_type": "slide"}
# ## 2. Bug 1: two log-sum-exps where one was meant
#
# Read the code first and look for the mistake. Each direction (view 1 as anchors, then
# view 2) builds the same-view and the cross-view similarities, reads the positives off the
# cross-view diagonal, and removes the diagonals before the log-sum-exp:

# %%
show_code(dcl_two_logsumexps)

# %% [markdown]
# **The story.** This is the structure of lightly's `DCLLoss` from its introduction in May 2022
# (PR #793, release 1.2.16) until June 2025, when PR #1827 replaced the two log-sum-exps by one
# "according to the DCL paper" (first released in 1.5.21). Its tests checked that the loss is
# symmetric in the two views, positive on random inputs, and that it backpropagates. All true
# of the broken loss. Every DCL and DCLW benchmark lightly published (CIFAR-10, Imagenette,
# ImageNet) was produced with it.
#
# **The mistake.** Eq. 2 of Yeh et al. puts *both* views' negatives into one sum $U_a$. Write
# $S_a$ for the sum of $e^{s_{a,j}}$ over the $N - 1$ same-view negatives and $C_a$ for the
# $N - 1$ cross-view negatives, so $U_a = S_a + C_a$. Adding two logs multiplies the sums:
#
# $$L^{\text{bug}}_a = -s_{a,\mathrm{pos}(a)} + \log S_a + \log C_a
#   = L^{\text{DCL}}_a + \log \frac{S_a\, C_a}{S_a + C_a}. \tag{9.1}$$
#
# The extra term is not a constant: it depends on the embeddings, so it changes the gradient.
# Let us check (9.1) on a random batch, with the two sums computed from the similarity matrix:

# %% tags=["nbval-check-output"]
n, tau = 6, 0.2
z1, z2 = unit_batch(n, 8, seed=0)
z = torch.cat([z1, z2])  # (2N, D)
s = z @ z.T / tau  # (2N, 2N)
view = torch.arange(2 * n) // n  # (2N,) 0 for view 1, 1 for view 2
negatives = negative_mask(n)  # (2N, 2N)
same = negatives & (view[:, None] == view[None, :])  # (2N, 2N) same-view negatives
cross = negatives & (view[:, None] != view[None, :])  # (2N, 2N) cross-view negatives
log_s = s.masked_fill(~same, float("-inf")).logsumexp(dim=1)  # (2N,) log S_a
log_c = s.masked_fill(~cross, float("-inf")).logsumexp(dim=1)  # (2N,) log C_a
extra = log_s + log_c - torch.logaddexp(log_s, log_c)  # (2N,) log(S C / (S + C))
gap = dcl_two_logsumexps(z1, z2, tau=tau) - dcl(z1, z2, tau=tau)
assert torch.isclose(gap, extra.mean(), atol=1e-12)
print(f"broken - DCL = {gap.item():.4f} = mean of log(S C / (S + C)) = {extra.mean().item():.4f}")

# %% [markdown]
# **The symptom.** The derivative of $\log S_a$ with respect to a same-view similarity is its
# softmax weight *within the same-view block*, and likewise for $C_a$. So each block of
# negatives pushes with a total weight of 1, twice the push of DCL's negatives, whose weights
# sum to 1 together; and a block of easy negatives pushes as hard as a block of hard ones.
# Here are the weights of the ten negatives of anchor 0:

# %% tags=["nbval-check-output"]
a = 0
w_dcl = torch.softmax(s[a].masked_fill(~negatives[a], float("-inf")), dim=0)  # (2N,)
w_bug = torch.softmax(s[a].masked_fill(~same[a], float("-inf")), dim=0) + torch.softmax(
    s[a].masked_fill(~cross[a], float("-inf")), dim=0
)  # (2N,)
assert math.isclose(w_dcl.sum().item(), 1.0) and math.isclose(w_bug.sum().item(), 2.0)
print(
    f"anchor {a}: total push DCL {w_dcl.sum():.3f}, broken {w_bug.sum():.3f} "
    f"(same-view {w_bug[same[a]].sum():.3f} + cross-view {w_bug[cross[a]].sum():.3f})"
)

# %%
cols = torch.nonzero(negatives[a]).flatten()  # (2N-2,)
fig, ax = plt.subplots(figsize=(6.5, 3.4))
x = torch.arange(len(cols))
ax.bar(x - 0.2, w_dcl[cols], width=0.4, label="DCL (one log-sum-exp)")
ax.bar(x + 0.2, w_bug[cols], width=0.4, label="broken (two log-sum-exps)")
ax.axvline(n - 1.5, color="0.5", lw=1, ls=":")
ax.set_xticks(x, [f"{'same' if c < n else 'cross'} {int(c) % n}" for c in cols], rotation=45)
ax.set(
    ylabel="softmax weight = dL/ds",
    title=f"push on each negative of anchor {a}, τ = {tau}",
)
ax.legend()
plt.show()

# %% [markdown]
# One more thing before you write your test. The extra term vanishes when $S_a C_a = S_a + C_a$,
# and that can happen on exactly the kind of tidy batch a test uses. With identical positives
# and orthogonal negatives (`z1 = z2 = eye(D)[:N]`, notebook 01), every negative has
# $s = 0$, so $S_a = C_a = N - 1$, and $(N-1)^2 = 2(N-1)$ at $N = 3$:

# %% tags=["nbval-check-output"]
for n_eye in (2, 3, 4):
    z_eye = torch.eye(5, dtype=torch.float64)[:n_eye]  # (N, D)
    broken = dcl_two_logsumexps(z_eye, z_eye, tau=0.5).item()
    right = dcl(z_eye, z_eye, tau=0.5).item()
    print(
        f"N = {n_eye}: broken {broken:8.4f}   DCL {right:8.4f}   equal: {math.isclose(broken, right)}"
    )

# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.1: a test that catches two log-sum-exps
#
# Write `closed_form_test(loss)` that returns `True` when `loss` matches a closed form of DCL
# and `False` otherwise. Pick a batch whose DCL value you can derive by hand (and which does
# not fall into the trap above), compute `loss(z1, z2, tau=...)` on it in float64, and compare
# with `math.isclose`. Before you run it: does a single temperature suffice?

# %% exercise="9.1" tags=["exercise"]
def closed_form_test(loss) -> bool:
    """True when loss matches a closed form of DCL on a hand-built batch."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.1" tags=["check"]
verdict = grade_test(
    check("9.1", closed_form_test, dcl_two_logsumexps, expected=False, quiet=True),
    check("9.1", closed_form_test, dcl_reference, expected=True, quiet=True),
)
closed_form_fn = closed_form_test if verdict.ok else passes_identical


# %% exercise="9.1" jupyter={"source_hidden": true} tags=["solution"]
def closed_form_test(loss) -> bool:  # noqa: F811
    """True when loss matches a closed form of DCL on a hand-built batch."""
    # All 2N embeddings identical: every similarity is 1/tau and L = log(2N - 2) at any tau.
    # The broken loss gives 1/tau + 2 log(N - 1): it depends on tau, so two tau are safer.
    for n in (2, 4):
        z = torch.ones(n, 3, dtype=torch.float64)  # (N, D)
        for tau in (0.1, 1.0):
            if not math.isclose(float(loss(z, z, tau=tau)), math.log(2 * n - 2), rel_tol=1e-9):
                return False
    return True


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 3. Bug 2: a mask that masks nothing
#
# DCL must remove two entries from each row's log-sum-exp: the anchor itself and its positive.
# Here is a version with a *soft* mask: it adds a number to the logits it wants to remove.

# %%
show_code(soft_masked_dcl)
show_code(dcl_eps_mask)

# %% [markdown]
# **The story.** The unofficial reference implementation of DCL (the one most copies start
# from) masks this way with `SMALL_NUM = log(1e-45)`, about $-103.6$: a masked term keeps a
# weight of $e^{-103.6} \approx 10^{-45}$, which is nothing. A copy in a public code index
# "adapted" it by replacing `SMALL_NUM` with `torch.finfo(dtype).eps`, the smallest number that
# changes 1.0. It *sounds* tiny. But a mask added to a logit must be hugely **negative**; adding
# $+2.2 \times 10^{-16}$ removes nothing. Why not use $-\infty$ in the first place? Because a soft
# mask is written as `logits + mask * value`, and at the entries the mask keeps, $0 \times (-\infty)$
# is not 0:

# %% tags=["nbval-check-output"]
print("[0, 1] * (-inf) =", torch.tensor([0.0, 1.0]) * float("-inf"))

# %% [markdown]
# (The package masks with `masked_fill(~mask, -inf)`, which never multiplies.) With nothing
# removed, the anchor's self-similarity and its positive stay in the denominator:
#
# $$L^{\text{eps}}_a = -s_{a,\mathrm{pos}(a)} + \log\Big(e^{s_{a,a}} + e^{s_{a,\mathrm{pos}(a)}} + U_a\Big)
#   \;>\; -s_{a,\mathrm{pos}(a)} + \log e^{s_{a,\mathrm{pos}(a)}} = 0 \tag{9.2}$$
#
# (up to a factor $e^{\varepsilon}$ that no float64 can see). That is InfoNCE (1.3) with an extra
# term, and the coupling factor $q_B$ is back. One consequence is easy to test: **DCL can be
# negative** (notebook 04), this loss never is.

# %% tags=["nbval-check-output"]
z1, z2 = unit_batch(6, 8, seed=1)
hard = soft_masked_dcl(z1, z2, tau=0.1)  # log(1e-45): the reference implementation's mask
exact = dcl(z1, z2, tau=0.1)
assert torch.isclose(hard, exact, rtol=1e-12) and not torch.isclose(dcl_eps_mask(z1, z2), exact)
print(
    f"mask log(1e-45): {hard.item():.6f}   DCL: {exact.item():.6f}   mask eps: "
    f"{dcl_eps_mask(z1, z2, tau=0.1).item():.6f}"
)

# %%
g = torch.Generator().manual_seed(2)
lowest_eps, below_zero = math.inf, 0
for _ in range(200):
    r1 = torch.randn(4, 3, generator=g, dtype=torch.float64)  # (N, D)
    r2 = r1 + 0.1 * torch.randn(4, 3, generator=g, dtype=torch.float64)  # close positives
    lowest_eps = min(lowest_eps, dcl_eps_mask(r1, r2, tau=0.1).item())
    below_zero += int(dcl(r1, r2, tau=0.1).item() < 0)
assert lowest_eps > 0 and below_zero > 0
print(
    f"200 batches with close positives: DCL < 0 in {below_zero}; the eps-mask loss never "
    f"(lowest {lowest_eps:.3f})"
)

# %% [markdown]
# The figure follows the batch of identical positives and orthogonal negatives over the
# temperature: DCL falls as $\log(2N - 2) - 1/\tau$, the broken loss stays above zero, above
# even InfoNCE.

# %%
z_eye = torch.eye(6, dtype=torch.float64)[:4]  # (N, D) N = 4
taus = torch.logspace(math.log10(0.05), math.log10(2.0), 40).tolist()
fig, ax = plt.subplots(figsize=(6, 3.5))
for label, loss in (("DCL", dcl), ("InfoNCE", info_nce), ("eps mask (broken)", dcl_eps_mask)):
    ax.plot(taus, [loss(z_eye, z_eye, tau=t).item() for t in taus], lw=2, label=label)
ax.axhline(0, color="0.3", lw=0.8)
ax.set(
    xscale="log",
    xlabel="temperature τ",
    ylabel="loss",
    title="identical positives, orthogonal negatives, N = 4",
)
ax.legend()
plt.show()


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.2: a test built on the sign of DCL
#
# Write `sign_test(loss)`: build a batch on which DCL is certainly **negative** (argue why, or
# derive its value), and return whether `loss` is below zero on it. No closed-form comparison
# this time: the test checks a property, not a number. Which positives and negatives, and
# which temperature, make the margin comfortable?

# %% exercise="9.2" tags=["exercise"]
def sign_test(loss) -> bool:
    """True when loss goes below zero on a batch where DCL must be negative."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.2" tags=["check"]
verdict = grade_test(
    check("9.2", sign_test, dcl_eps_mask, expected=False, quiet=True),
    check("9.2", sign_test, dcl_reference, expected=True, quiet=True),
)
sign_fn = sign_test if verdict.ok else passes_below_zero


# %% exercise="9.2" jupyter={"source_hidden": true} tags=["solution"]
def sign_test(loss) -> bool:  # noqa: F811
    """True when loss goes below zero on a batch where DCL must be negative."""
    # Identical positives (s = 1/tau), orthogonal negatives (s = 0): L = log(2N - 2) - 1/tau,
    # which is log 6 - 10 < 0 for N = 4 at tau = 0.1. With the positive in the denominator a
    # loss is -log(a ratio <= 1) >= 0.
    z = torch.eye(4, dtype=torch.float64)  # (N, D)
    return float(loss(z, z, tau=0.1)) < 0


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 4. Bug 3: `normalize` whose result is dropped
#
# Spot it:

# %%
show_code(dcl_forgot_normalize)

# %% [markdown]
# **The story.** `F.normalize` returns a new tensor; it does not change its argument. The two
# lines look like a normalisation, a reviewer reads them as one, and no linter complains
# (a call *might* have side effects). A relative of this bug is common: the unofficial
# reference implementation of DCL does not normalise inside the loss at all and leaves it to
# the caller; its README example feeds raw network outputs straight in.
#
# **The property it breaks.** DCL only sees cosines. Scaling any embedding by any positive
# number changes nothing:
#
# $$L(c_1 \odot z^{(1)},\, c_2 \odot z^{(2)}) = L(z^{(1)}, z^{(2)}) \quad \text{for all row
# scales } c_{1,i}, c_{2,i} > 0. \tag{9.3}$$
#
# Without the normalisation the similarities are raw dot products, and an encoder can lower
# the loss just by making its embeddings longer: the logits grow with the square of the
# norm, like a temperature going to zero. Notice also which batches *hide* the bug: any batch
# of unit vectors (and the course's closed forms all use unit vectors, or identical rows,
# whose similarities are all equal whatever their length).

# %% tags=["nbval-check-output"]
z1, z2 = unit_batch(8, 8, seed=3, noise=0.3)
assert torch.isclose(dcl_forgot_normalize(z1, z2, tau=0.5), dcl(z1, z2, tau=0.5))  # unit rows
scales = [0.25, 0.5, 1.0, 2.0, 4.0]
broken = [dcl_forgot_normalize(c * z1, c * z2, tau=0.5).item() for c in scales]
right = [dcl(c * z1, c * z2, tau=0.5).item() for c in scales]
assert all(b > b_next for b, b_next in zip(broken, broken[1:]))  # longer is "better"
assert max(right) - min(right) < 1e-12
print(
    f"all rows scaled by 4: broken {broken[-1]:.3f} (unit rows: {broken[2]:.3f}); DCL {right[-1]:.3f}"
)

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot(scales, right, "o-", label="DCL (normalises)")
ax.plot(scales, broken, "s-", label="forgot normalize (broken)")
ax.set(
    xscale="log",
    xlabel="length of every embedding",
    ylabel="loss",
    title="same directions, longer vectors, τ = 0.5",
)
ax.legend()
plt.show()


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.3: a test of an invariance
#
# Write `rescaling_test(loss)` that checks (9.3) on a random float64 batch: rescale the raw
# embeddings, row by row, and compare the two losses. Which scales make the test sensitive,
# and why would scaling every row by the same factor be a weaker test?

# %% exercise="9.3" tags=["exercise"]
def rescaling_test(loss) -> bool:
    """True when loss does not change under positive rescaling of the raw embeddings."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.3" tags=["check"]
verdict = grade_test(
    check("9.3", rescaling_test, dcl_forgot_normalize, expected=False, quiet=True),
    check("9.3", rescaling_test, dcl_reference, expected=True, quiet=True),
)
rescaling_fn = rescaling_test if verdict.ok else passes_rescaling


# %% exercise="9.3" jupyter={"source_hidden": true} tags=["solution"]
def rescaling_test(loss) -> bool:  # noqa: F811
    """True when loss does not change under positive rescaling of the raw embeddings."""
    # A different positive scale per row, spanning two orders of magnitude. (A common factor
    # for all rows hides a missing normalisation on batches where all norms are equal.)
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 5, generator=g, dtype=torch.float64)  # (N, D)
    z2 = torch.randn(6, 5, generator=g, dtype=torch.float64)  # (N, D)
    c1 = torch.logspace(-1, 1, 6, dtype=torch.float64)[:, None]  # (N, 1)
    c2 = c1.flip(0)  # (N, 1)
    before, after = float(loss(z1, z2, tau=0.2)), float(loss(c1 * z1, c2 * z2, tau=0.2))
    return math.isclose(before, after, rel_tol=1e-9)


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 5. Bug 4: negatives gathered without their gradient
#
# With data parallelism each GPU (a *rank*) holds $n$ of the batch's pairs. So that every anchor
# still sees the negatives of the whole batch, each rank gathers the embeddings of all ranks.
# Here is the obvious way, and a common half fix:

# %%
show_code(all_gather_plain)
show_code(all_gather_own_rows)

# %% [markdown]
# **The story.** `torch.distributed.all_gather` writes into the buffers it is given; autograd
# does not record that, so the gathered tensor has no gradient history, not even for the
# rank's own rows. The half fix puts the own rows back. Lightly's gather layer had a related
# flaw until release 1.5.4 (PR #1531, May 2024): its backward returned each rank's slice of its
# *own* incoming gradient, without summing over ranks first, which gives exactly the half
# fix's gradient. Lightly's 2-GPU ImageNet runs of DCL and DCLW (July 2023) predate the fix.
# The package's `gather_with_grad` sums the incoming gradients of all ranks (an all-reduce)
# before each rank keeps its slice.
#
# **Why the value cannot catch it.** The gathered numbers are the right numbers; only their
# gradient is missing. Recall the gradient of the batch loss (4.4): embedding $k$ moves once as
# an **anchor** (first sum) and once as a **candidate** of every other anchor (second sum).
# Under $W$ ranks, write $r(k)$ for the rank that holds row $k$:
#
# $$\frac{\partial L}{\partial z_k} = \frac{1}{M\tau}\Big(\sum_j C_{k,j}\, z_j
#   + \sum_{a} C_{a,k}\, z_a\Big) \;\xrightarrow{\;\texttt{all\_gather}\;}\;
#   \frac{1}{M\tau}\sum_j C_{k,j}\, z_j, \qquad
#   \xrightarrow{\;\text{own rows}\;}\; \frac{1}{M\tau}\Big(\sum_j C_{k,j}\, z_j
#   + \sum_{a:\, r(a) = r(k)} C_{a,k}\, z_a\Big). \tag{9.4}$$
#
# **One process or two?** This runs on two ranks *simulated exactly* in one process
# (`dcl_two_ranks`): each rank's loss is computed against the gathered rows, with gradient
# kept through all of them, through the rank's own rows only, or through none, and the rank
# losses are averaged as data parallelism averages gradients. Two real `gloo` processes
# (`torch.multiprocessing.spawn`) would cost a few seconds of process start-up per run and fail
# in notebook environments where the spawned workers cannot import the notebook's functions;
# `tests/test_ranks.py` instead checks the simulation against two real gloo processes running
# `all_gather_plain`, `all_gather_own_rows` and `gather_with_grad`, gradient for gradient.

# %% tags=["nbval-check-output"]
n, tau = 8, 0.2  # 4 pairs per rank
z1, z2 = unit_batch(n, 8, seed=4)
true1, true2 = dcl_grad(z1, z2, tau=tau)  # the analytic gradient (4.2), (N, D) each
true = torch.cat([true1, true2])  # (2N, D)
grads = {}
print(
    f"{'gradient through':17} {'loss':>8} {'|g| / |true|':>13} {'|g - true| / |true|':>20} {'cosine':>7}"
)
for mode in ("all", "own", "none"):
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    value = dcl_two_ranks(*leaves, tau=tau, normalize=False, grad_through=mode)
    grads[mode] = torch.cat(torch.autograd.grad(value, leaves))  # (2N, D)
    rel = ((grads[mode] - true).norm() / true.norm()).item()
    length = (grads[mode].norm() / true.norm()).item()
    cos = F.cosine_similarity(grads[mode].flatten(), true.flatten(), dim=0).item()
    assert torch.isclose(value, dcl(z1, z2, tau=tau, normalize=False), atol=1e-12)
    print(f"{mode:17} {value.item():8.4f} {length:13.3f} {rel:20.3f} {cos:7.3f}")
assert torch.allclose(grads["all"], true, atol=1e-12)

# %% [markdown]
# The loss is the same in all three rows. The gradient of plain `all_gather` has lost the
# candidate half of (4.4): it is much shorter than the true one and not quite parallel to it;
# the half fix is closer, and still wrong. Training does not stop (the anchor term alone
# still pulls positives together and pushes negatives apart), so a loss curve shows nothing
# alarming: the run simply follows a different, shorter gradient than the one it claims.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
for ax, mode, title in zip(axes, ("none", "own"), ("plain all_gather", "own rows put back")):
    lim = 1.1 * true.abs().max().item()
    ax.scatter(true.flatten(), grads[mode].flatten(), s=10)
    ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=1, label="= analytic gradient")
    ax.set(
        xlim=(-lim, lim),
        ylim=(-lim, lim),
        xlabel="analytic dL/dz (4.2)",
        title=f"{title}, 2 ranks, τ = {tau}",
    )
    ax.legend()
axes[0].set_ylabel("gradient through the gather")
plt.show()


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.4: a test with the analytic gradient
#
# Write `gradient_test(loss)` that compares the autograd gradient of `loss` with
# `dcl_grad(z1, z2, tau=...)` from `dcl_teach.grads`. Mind three details: `dcl_grad` is the
# gradient with respect to **unit** embeddings that the loss does not normalise again
# (`normalize=False`); the two-rank loss needs an even $N$; and use float64 and
# `torch.allclose` with a tight tolerance.

# %% exercise="9.4" tags=["exercise"]
def gradient_test(loss) -> bool:
    """True when autograd through loss matches the analytic DCL gradient (4.2)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.4" tags=["check"]
two_ranks_fixed = partial(dcl_two_ranks, grad_through="all")  # the correct gather
verdict = grade_test(
    check("9.4", gradient_test, dcl_two_ranks_all_gather, expected=False, quiet=True),
    check("9.4", gradient_test, two_ranks_fixed, expected=True, quiet=True),
)
gradient_fn = gradient_test if verdict.ok else passes_gradient


# %% exercise="9.4" jupyter={"source_hidden": true} tags=["solution"]
def gradient_test(loss) -> bool:  # noqa: F811
    """True when autograd through loss matches the analytic DCL gradient (4.2)."""
    g = torch.Generator().manual_seed(1)
    z1 = F.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)  # (N, D)
    z2 = F.normalize(z1 + torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)
    leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    auto = torch.autograd.grad(loss(*leaves, tau=0.2, normalize=False), leaves)
    analytic = dcl_grad(z1, z2, tau=0.2)
    return all(torch.allclose(a, b, rtol=1e-9, atol=1e-12) for a, b in zip(auto, analytic))


# %% [markdown]
# Whichever test we carry on with also catches the half fix, and passes the one-process DCL:

# %% tags=["nbval-check-output"]
half_fix = partial(dcl_two_ranks, grad_through="own")
assert not gradient_fn(half_fix) and gradient_fn(dcl_reference)
print(
    f"half fix passes: {gradient_fn(half_fix)}; one-process DCL passes: {gradient_fn(dcl_reference)}"
)


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 6. Bug 5: the positive on the diagonal
#
# Spot it:

# %%
show_code(dcl_positive_on_diagonal)

# %% [markdown]
# **The story.** In the $N \times N$ matrix `z1 @ z2.T` (the CLIP layout, with
# `labels = arange(N)`) the positives *are* on the diagonal. Code ported from that layout to the
# stacked $2N \times 2N$ matrix of this course keeps the habit, and the index of the positive
# is off by $N$: the diagonal of `z @ z.T` pairs every anchor with **itself**. For unit rows
# that is the constant $1/\tau$:
#
# $$L^{\text{diag}}_a = -s_{a,a} + \log U_a = -\frac{1}{\tau} + \log U_a. \tag{9.5}$$
#
# The positive's similarity has left the loss. The loss still pushes negatives apart, so it
# trains, but nothing rewards the two views of an image for agreeing. Compare the loss of a
# batch whose second view equals the first, a noisy second view, and a random one:

# %% tags=["nbval-check-output"]
z1, z_noisy = unit_batch(64, 16, seed=5, noise=0.3)
z_random = unit_batch(64, 16, seed=6)[0]
second_views = {"aligned": z1, "noisy": z_noisy, "random": z_random}
values = {
    name: [loss(z1, v, tau=0.5).item() for v in second_views.values()]
    for name, loss in (("DCL", dcl), ("positive on diagonal", dcl_positive_on_diagonal))
}
for name, row in values.items():
    print(f"{name:21}", "   ".join(f"{k} {v:.3f}" for k, v in zip(second_views, row)))
spread = {name: max(row) - min(row) for name, row in values.items()}
assert spread["positive on diagonal"] < 0.05 * spread["DCL"]

# %%
fig, ax = plt.subplots(figsize=(6, 3.4))
x = torch.arange(3)
for k, (name, row) in enumerate(values.items()):
    ax.bar(x + (k - 0.5) * 0.4, row, width=0.4, label=name)
ax.set_xticks(x, [f"second view {v}" for v in second_views])
ax.set(ylabel="loss", title="does the loss care whether the views agree? N = 64, τ = 0.5")
ax.legend()
plt.show()

# %% [markdown]
# And the test batches of the course? With identical views, $s_{a,a} = s_{a,\mathrm{pos}(a)}$,
# and the bug disappears. Every closed form so far had `z1 = z2`:

# %% tags=["nbval-check-output"]
for label, zz in (("identical", torch.ones(4, 3)), ("aligned-orthogonal", torch.eye(4)[:3])):
    zz = zz.double()
    same_value = torch.isclose(dcl_positive_on_diagonal(zz, zz), dcl(zz, zz), rtol=1e-12)
    print(f"{label}: broken == DCL? {bool(same_value)}")
    assert same_value


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.5: a closed form where the views differ
#
# Derive the DCL loss of a batch whose two views are **not** equal but still simple enough to
# work out by hand (one idea: `z1 = eye(D)[:N]` and `z2 = -z1`; what are $s_{a,\mathrm{pos}(a)}$
# and $U_a$ then?). Write `views_differ_test(loss)` that compares `loss` with your formula, at
# two temperatures.

# %% exercise="9.5" tags=["exercise"]
def views_differ_test(loss) -> bool:
    """True when loss matches a closed form of DCL on a batch with two different views."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.5" tags=["check"]
verdict = grade_test(
    check("9.5", views_differ_test, dcl_positive_on_diagonal, expected=False, quiet=True),
    check("9.5", views_differ_test, dcl_reference, expected=True, quiet=True),
)
views_differ_fn = views_differ_test if verdict.ok else passes_anti_aligned


# %% exercise="9.5" jupyter={"source_hidden": true} tags=["solution"]
def views_differ_test(loss) -> bool:  # noqa: F811
    """True when loss matches a closed form of DCL on a batch with two different views."""
    # z2 = -z1 with orthonormal rows: the positive has cosine -1 (s = -1/tau); every negative,
    # same view or cross view, has cosine 0 (s = 0), so U_a = 2N - 2 and
    # L = 1/tau + log(2N - 2). The broken loss gives -1/tau + log(2N - 2).
    for n in (2, 4):
        z1 = torch.eye(6, dtype=torch.float64)[:n]  # (N, D)
        for tau in (0.2, 1.0):
            expected = 1 / tau + math.log(2 * n - 2)
            if not math.isclose(float(loss(z1, -z1, tau=tau)), expected, rel_tol=1e-9):
                return False
    return True


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 7. Bug 6: a sum where a mean was meant
#
# The last one is a single word:

# %%
show_code(dcl_summed)

# %% [markdown]
# **The story.** A sum is not wrong in itself: the paper sums its loss over all $2N$ anchors,
# and the unofficial reference implementation trains on `l(z1, z2) + l(z2, z1)`, the *sum* of
# two one-directional means. Lightly and this course average over the $2N$ anchors. The bug is a
# sum where the rest of the code expects a mean: a learning rate tuned for the mean, or a
# batch size that changes. Since $L_{\text{sum}} = 2N\, L_{\text{mean}}$,
#
# $$\nabla L_{\text{sum}} = 2N\, \nabla L_{\text{mean}}, \qquad
#   \theta - \eta\, \nabla L_{\text{sum}} = \theta - (2N\eta)\, \nabla L_{\text{mean}}: \tag{9.6}$$
#
# one SGD step on the sum is a step on the mean with a learning rate $2N$ times larger, and it
# grows with the batch. First the factor itself, with autograd:

# %% tags=["nbval-check-output"]
for n in (4, 32):
    z1, z2 = unit_batch(n, 8, seed=7)
    a_leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    b_leaves = (z1.clone().requires_grad_(), z2.clone().requires_grad_())
    g_sum = torch.cat(torch.autograd.grad(dcl_summed(*a_leaves, tau=0.2), a_leaves))  # (2N, D)
    g_mean = torch.cat(torch.autograd.grad(dcl(*b_leaves, tau=0.2), b_leaves))  # (2N, D)
    ratio = (g_sum.norm() / g_mean.norm()).item()
    assert torch.allclose(g_sum, 2 * n * g_mean, rtol=1e-9, atol=1e-12)
    print(f"N = {n:2}: |grad of the sum| / |grad of the mean| = {ratio:.6f} = 2N")


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.6: a floor and a ceiling
#
# Notebook 04 derived the floor (4.3): $L^{\text{DCL}}_a \ge \log(2N-2) - 2/\tau$. Derive the
# matching **ceiling**: the largest value an anchor's loss can take on the unit sphere. Then
# write `bounds_test(loss)` that draws random float64 batches, of at least two sizes and two
# temperatures, and checks that the loss lies between the floor and the ceiling.

# %% exercise="9.6" tags=["exercise"]
def bounds_test(loss) -> bool:
    """True when loss stays between the floor and the ceiling of DCL on random batches."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.6" tags=["check"]
verdict = grade_test(
    check("9.6", bounds_test, dcl_summed, expected=False, quiet=True),
    check("9.6", bounds_test, dcl_reference, expected=True, quiet=True),
)
bounds_fn = bounds_test if verdict.ok else passes_bounds


# %% exercise="9.6" jupyter={"source_hidden": true} tags=["solution"]
def bounds_test(loss) -> bool:  # noqa: F811
    """True when loss stays between the floor and the ceiling of DCL on random batches."""
    # Ceiling: the positive at cosine -1 (s = -1/tau) and every one of the 2N - 2 negatives at
    # cosine +1 give -(-1/tau) + log((2N - 2) e^{1/tau}) = log(2N - 2) + 2/tau. The mean over
    # anchors stays within the same bounds; a sum over 2N anchors does not.
    g = torch.Generator().manual_seed(2)
    for n in (2, 8):
        for tau in (0.1, 0.5):
            for _ in range(5):
                z1 = torch.randn(n, 3, generator=g, dtype=torch.float64)  # (N, D)
                z2 = torch.randn(n, 3, generator=g, dtype=torch.float64)  # (N, D)
                centre = math.log(2 * n - 2)
                if abs(float(loss(z1, z2, tau=tau)) - centre) > 2 / tau + 1e-12:
                    return False
    return True


# %% [markdown] slideshow={"slide_type": "subslide"}
# **What SGD does with it.** A linear encoder ($10 \to 4$) on $N = 32$ noisy pairs, trained by
# SGD with momentum 0.9 (the usual setting for SimCLR-style training) at a learning rate that
# suits the mean, then on the sum at the same rate. Because the loss normalises the
# embeddings, it does not change when the weights are scaled, so its gradient is orthogonal
# to the weights and shrinks as they grow. An oversized step therefore does not blow up to
# `nan`: it makes the weights longer, and every later step relatively smaller. Watch the
# length of the weights and the loss.

# %%
g = torch.Generator().manual_seed(8)
n_sgd = 32
x = torch.randn(n_sgd, 10, generator=g, dtype=torch.float64)  # (N, 10) the "images"
v1 = x + 0.3 * torch.randn(n_sgd, 10, generator=g, dtype=torch.float64)  # (N, 10) view 1
v2 = x + 0.3 * torch.randn(n_sgd, 10, generator=g, dtype=torch.float64)  # (N, 10) view 2
w0 = 0.3 * torch.randn(10, 4, generator=g, dtype=torch.float64)  # (10, 4) the encoder


def sgd(loss, lr: float, steps: int) -> dict:
    """SGD with momentum on the encoder; the mean DCL, |W| and W itself after each step."""
    w = w0.clone().requires_grad_()
    opt = torch.optim.SGD([w], lr=lr, momentum=0.9)
    history = {"dcl": [], "norm": [], "w": []}
    for _ in range(steps):
        opt.zero_grad()
        loss(v1 @ w, v2 @ w, tau=0.2).backward()
        opt.step()
        with torch.no_grad():
            history["dcl"].append(dcl(v1 @ w, v2 @ w, tau=0.2).item())
            history["norm"].append(w.norm().item())
            history["w"].append(w.detach().clone())
    return history


lr = 0.5
runs = {"mean": sgd(dcl_reference, lr, 60), "sum": sgd(dcl_summed, lr, 60)}

# %%
first_step = {k: (r["w"][0] - w0).norm().item() / w0.norm().item() for k, r in runs.items()}
growth = runs["sum"]["norm"][-1] / runs["mean"]["norm"][-1]
assert math.isclose(first_step["sum"] / first_step["mean"], 2 * n_sgd, rel_tol=1e-9)
assert growth > 10 and runs["sum"]["dcl"][-1] > runs["mean"]["dcl"][-1] + 0.1
print(
    f"lr = {lr}: the first step moves W by {first_step['mean']:.2f} of its length for the mean, "
    f"{first_step['sum']:.1f} for the sum (2N = {2 * n_sgd} times more)"
)
print(
    f"after 60 steps |W| is {growth:.0f} times larger for the sum; mean DCL "
    f"{runs['mean']['dcl'][-1]:.3f} (mean) vs {runs['sum']['dcl'][-1]:.3f} (sum)"
)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for name, run in runs.items():
    axes[0].plot(run["dcl"], label=f"SGD on the {name}, lr = {lr}")
    axes[1].plot(run["norm"], label=f"SGD on the {name}, lr = {lr}")
start = dcl(v1 @ w0, v2 @ w0, tau=0.2).item()
axes[0].axhline(start, color="0.5", lw=1, ls=":", label="before training")
axes[0].set(xlabel="SGD step", ylabel="DCL (mean)", title="loss, N = 32, τ = 0.2")
axes[1].set(xlabel="SGD step", ylabel="|W|", yscale="log", title="length of the encoder's weights")
for ax in axes:
    ax.legend()
plt.show()

# %% [markdown]
# Nothing in the loss curve of the sum says "learning rate too large": there is no spike and
# no `nan`, just a run that falls behind while its weights grow (the dotted line is the
# loss before training). On a real network, batch normalisation makes the layers before it
# scale-invariant too, so the same thing happens there. Which learning rate gives the mean's run back exactly? That is the next exercise.


# %% [markdown] slideshow={"slide_type": "subslide"}
# ### Exercise 9.7: the learning rate that undoes a sum
#
# A run was tuned with SGD at learning rate `lr` on the **mean** over the $2N$ anchors. Write
# `matching_lrs(lr, n)` returning two learning rates: the one that makes SGD on the paper's
# **sum over all $2N$ anchors** take exactly the same steps, and the one for the reference
# implementation's `l(z1, z2) + l(z2, z1)` (each `l` a mean over the $N$ anchors of one
# view). The cell after the check trains with your rates and compares the weights.

# %% exercise="9.7" tags=["exercise"]
def matching_lrs(lr: float, n: int) -> tuple[float, float]:
    """(lr for the sum over 2N anchors, lr for the sum of two directional means)."""
    # Your code here.
    raise NotImplementedError


# %% exercise="9.7" tags=["check"]
verdict = check("9.7", matching_lrs, 0.5, 32, expected=(0.5 / 64, 0.25), rtol=1e-12)
lrs_fn = matching_lrs if verdict.ok else (lambda lr, n: (lr / (2 * n), lr / 2))


# %% exercise="9.7" jupyter={"source_hidden": true} tags=["solution"]
def matching_lrs(lr: float, n: int) -> tuple[float, float]:  # noqa: F811
    """(lr for the sum over 2N anchors, lr for the sum of two directional means)."""
    # The sum over 2N anchors is 2N times the mean; the two directional means add up to
    # twice the mean over all 2N anchors. Scale the learning rate down by the same factor.
    return lr / (2 * n), lr / 2


# %% [markdown]
# With the rates we carry on with, 20 steps on each loss land on the same weights as 20 steps
# on the mean:

# %% tags=["nbval-check-output"]
lr_sum, lr_two = lrs_fn(lr, n_sgd)
two_directions = lambda z1, z2, tau: 2 * dcl(z1, z2, tau=tau)  # noqa: E731 - l(1,2) + l(2,1)
for name, loss, rate in (("sum", dcl_summed, lr_sum), ("two directions", two_directions, lr_two)):
    w_end = sgd(loss, rate, 20)["w"][-1]
    diff = (w_end - runs["mean"]["w"][19]).abs().max().item()
    assert diff < 1e-8
    print(f"{name:14} at lr {rate:.6f}: same weights as the mean at lr {lr} (max diff < 1e-8)")

# %% [markdown]
# One caveat for real training scripts: with weight decay $\lambda$, SGD adds $\lambda\theta$ to
# the gradient, and dividing the learning rate by $2N$ divides the decay too. To recover the
# mean's run exactly, the decay of the summed loss must be multiplied by $2N$ as well.


# %% [markdown] slideshow={"slide_type": "slide"}
# ## 8. Which tool catches which bug
#
# Time to run every test of this notebook (the ones you wrote, or the reference tests where an
# exercise is unfinished) against every broken loss. "caught" means the test returned `False`;
# a test that raises, for instance because it uses an odd $N$ on the two-rank loss, shows as
# "error".

# %% tags=["nbval-check-output"]
tests = {
    "symmetry": passes_symmetries,
    "9.1 closed form": closed_form_fn,
    "9.2 sign": sign_fn,
    "9.3 rescaling": rescaling_fn,
    "9.4 gradient": gradient_fn,
    "9.5 views differ": views_differ_fn,
    "9.6 bounds": bounds_fn,
}


def outcome(test, loss) -> str:
    try:
        return "·" if test(loss) else "caught"
    except Exception:  # noqa: BLE001 - a test that breaks on a loss is reported, not fatal
        return "error"


table = {bug: {t: outcome(test, loss) for t, test in tests.items()} for bug, loss in BROKEN.items()}
assert all(test(dcl_reference) for test in tests.values())
assert all("caught" in row.values() for row in table.values())
print(f"{'bug':22}" + "".join(f"{t:>18}" for t in tests))
for bug, row in table.items():
    print(f"{bug:22}" + "".join(f"{row[t]:>18}" for t in tests))
print(f"{'dcl_reference':22}" + "".join(f"{'·':>18}" for _ in tests))

# %%
grid = torch.tensor([[row[t] == "caught" for t in tests] for row in table.values()]).float()
fig, ax = plt.subplots(figsize=(8.5, 3.6))
ax.imshow(grid, cmap="Greens", vmin=0, vmax=1.3)
ax.set_xticks(range(len(tests)), list(tests), rotation=30, ha="right")
ax.set_yticks(range(len(table)), list(table))
for i, row in enumerate(table.values()):
    for j, t in enumerate(tests):
        color = "white" if row[t] == "caught" else "black"
        ax.text(j, i, row[t], ha="center", va="center", fontsize=8, color=color)
ax.set(xlabel="test", ylabel="broken loss", title="which test catches which bug")
plt.show()

# %% [markdown]
# Read the table by columns, too. The gradient test catches every bug that changes the
# gradient on the sphere; it is blind to the missing normalisation, which only shows on raw
# inputs, since `dcl_grad` is defined on the sphere. The closed forms with `z1 = z2` catch
# the aggregation, mask and reduction bugs but are blind to a wrong positive. Invariances
# catch normalisation bugs and nothing else. No single test is enough; together they
# leave every bug here nowhere to hide.

# %% [markdown] slideshow={"slide_type": "slide"}
# ## Summary
#
# | bug | where it was seen | symptom | the tool that catches it | the fix |
# |---|---|---|---|---|
# | two log-sum-exps (9.1) | lightly's `DCLLoss`, 2022 to 2025 | each block of negatives pushes with weight 1 | closed form with identical embeddings; gradient | one log-sum-exp over both views (Eq. 2 of Yeh et al.) |
# | mask adds `eps` (9.2) | a copy of the unofficial reference code | positive back in the denominator, loss never < 0 | sign of DCL; every closed form; gradient | `masked_fill(~mask, -inf)` |
# | `normalize` result dropped (9.3) | easy to write; the reference code leaves it to the caller | longer embeddings lower the loss | rescaling invariance; bounds | assign the result |
# | `all_gather` without gradient (9.4) | `torch.distributed.all_gather`; lightly's gather layer before 1.5.4 | right value, candidate half of the gradient missing | autograd against the analytic gradient | `gather_with_grad` (all-reduce in backward) |
# | positive on the diagonal (9.5) | CLIP-style code on the stacked matrix | views never pulled together | a closed form with different views; gradient | `positive_index`, or `s[a, pos(a)]` |
# | sum for mean (9.6) | the paper's and the reference code's convention | steps 2N times longer | any closed form; bounds; gradient | `.mean()`, or divide the learning rate by 2N |
#
# * A broken loss usually runs, returns finite numbers and trains. Only a test that checks a
#   property the bug breaks can catch it: a symmetry every bug keeps catches nothing.
# * Closed forms pin values, but tidy batches hide bugs: `z1 = z2` hides a wrong positive,
#   unit rows hide a missing normalisation, and at $N = 3$ two log-sum-exps equal one.
# * The value can be right and the gradient wrong (a gather without gradient): compare
#   autograd with the analytic gradient (4.2).
# * A sum for a mean multiplies the SGD step by $2N$ (9.6); divide the learning rate by the
#   same factor to recover the same run.
#
# **Exercises in this notebook**
#
# * 9.1 A test that catches two log-sum-exps.
# * 9.2 A test built on the sign of DCL.
# * 9.3 A test of an invariance.
# * 9.4 A test with the analytic gradient.
# * 9.5 A closed form where the views differ.
# * 9.6 A floor and a ceiling.
# * 9.7 The learning rate that undoes a sum.
