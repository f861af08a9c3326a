"""Tests for dcl_teach.augment: parameter statistics, exact geometry, colour ops vs references."""

from __future__ import annotations

import colorsys
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcl_teach.augment import (
    JITTER_OPS,
    Recipe,
    _from_hsv,
    _hue,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_params,
    augment,
    recipe_for,
    rgb_to_grayscale,
    sample_params,
    two_views,
)

N_DRAWS = 20_000
# Kolmogorov-Smirnov critical value at alpha = 1e-6 for N_DRAWS samples: a correct sampler
# fails once in a million runs; the wrong distributions checked here miss it by far.
KS_CRIT = math.sqrt(-math.log(1e-6 / 2) / (2 * N_DRAWS))  # ~0.019
# Tolerance for a rate estimated from N_DRAWS Bernoulli draws: 6 standard deviations at p=0.5.
RATE_TOL = 6 * math.sqrt(0.25 / N_DRAWS)  # ~0.021

IDENTITY = Recipe(
    scale=(1.0, 1.0),
    ratio=(1.0, 1.0),
    flip_p=0.0,
    jitter_p=0.0,
    gray_p=0.0,
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ks_stat(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of samples and cdf."""
    x = np.sort(samples)
    f = cdf(x)
    n = len(x)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


def accepted_area_cdf(scale: tuple[float, float], ratio: tuple[float, float]):
    """CDF of the crop area of RandomResizedCrop, derived from its definition.

    Proposals: area a ~ U(scale), t = log(ratio) ~ U(log ratio range); a box fits iff
    w = sqrt(a e^t) <= 1 and h = sqrt(a e^-t) <= 1, i.e. log a <= t <= -log a. The first
    fitting proposal is kept, so the kept area has density proportional to P(fit | a).
    """
    lo_t, hi_t = math.log(ratio[0]), math.log(ratio[1])
    grid = np.linspace(scale[0], scale[1], 200_001)
    log_a = np.log(grid)
    p_fit = np.clip(np.minimum(-log_a, hi_t) - np.maximum(log_a, lo_t), 0, None) / (hi_t - lo_t)
    cum = np.concatenate([[0.0], np.cumsum((p_fit[1:] + p_fit[:-1]) / 2 * np.diff(grid))])
    cum /= cum[-1]
    return lambda x: np.interp(x, grid, cum)


@pytest.fixture(scope="module")
def cifar_params() -> dict[str, np.ndarray]:
    p = sample_params(N_DRAWS, recipe_for("cifar10"), generator=gen(123))
    return {k: v.numpy() for k, v in p.items()}


# ----------------------------------------------------------------------- parameter statistics


def test_crop_boxes_lie_inside_the_image(cifar_params):
    x0, y0, w, h = cifar_params["crop"].T
    eps = 1e-6
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + w <= 1 + eps).all() and (y0 + h <= 1 + eps).all()
    area = w * h
    assert area.min() >= 0.08 - eps and area.max() <= 1 + eps


def test_crop_area_follows_random_resized_crop(cifar_params):
    x0, y0, w, h = cifar_params["crop"].T
    area = w * h
    d = ks_stat(area, accepted_area_cdf((0.08, 1.0), (3 / 4, 4 / 3)))
    assert d < KS_CRIT, f"KS distance {d:.4f} >= {KS_CRIT:.4f}"
    # A sampler that clamps instead of rejecting, or ignores the ratio constraint, is far off:
    d_uniform = ks_stat(area, lambda x: (x - 0.08) / 0.92)
    assert d_uniform > 5 * KS_CRIT


def test_crop_log_ratio_is_uniform_where_every_ratio_fits(cifar_params):
    x0, y0, w, h = cifar_params["crop"].T
    # For area <= 3/4 every ratio in (3/4, 4/3) fits, so log(w/h) is uniform given the area.
    log_ratio = np.log(w / h)[w * h <= 0.75]
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    assert log_ratio.min() >= lo - 1e-5 and log_ratio.max() <= hi + 1e-5
    crit = math.sqrt(-math.log(1e-6 / 2) / (2 * len(log_ratio)))
    assert ks_stat(log_ratio, lambda x: (x - lo) / (hi - lo)) < crit


def test_crop_position_is_uniform(cifar_params):
    x0, y0, w, h = cifar_params["crop"].T
    keep = w < 0.9  # room to move
    for rel in (x0[keep] / (1 - w[keep]), y0[keep] / (1 - h[keep])):
        crit = math.sqrt(-math.log(1e-6 / 2) / (2 * len(rel)))
        assert ks_stat(rel, lambda x: np.clip(x, 0, 1)) < crit


@pytest.mark.parametrize(("key", "p"), [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2)])
def test_probabilities_match_the_recipe(cifar_params, key, p):
    rate = cifar_params[key].mean()
    assert abs(rate - p) < RATE_TOL, f"{key} rate {rate:.4f}, expected {p}"


@pytest.mark.parametrize(
    ("key", "lo", "hi"),
    [
        ("brightness", 0.6, 1.4),
        ("contrast", 0.6, 1.4),
        ("saturation", 0.6, 1.4),
        ("hue", -0.1, 0.1),
    ],
)
def test_jitter_factors_are_uniform_in_range(cifar_params, key, lo, hi):
    f = cifar_params[key]
    assert f.min() >= lo and f.max() <= hi
    assert f.min() < lo + 0.01 and f.max() > hi - 0.01  # the whole range is used
    assert ks_stat(f, lambda x: (x - lo) / (hi - lo)) < KS_CRIT


def test_jitter_order_is_a_uniform_random_permutation(cifar_params):
    order = cifar_params["order"]
    assert (np.sort(order, axis=1) == np.arange(4)).all()
    for slot in range(4):
        freq = np.bincount(order[:, slot], minlength=4) / N_DRAWS
        np.testing.assert_allclose(freq, 0.25, atol=6 * math.sqrt(0.25 * 0.75 / N_DRAWS))


def test_digits_recipe_statistics():
    r = recipe_for("digits")
    p = {k: v.numpy() for k, v in sample_params(N_DRAWS, r, generator=gen(7)).items()}
    area = p["crop"][:, 2] * p["crop"][:, 3]
    assert area.min() >= 0.5 - 1e-6
    assert ks_stat(area, accepted_area_cdf((0.5, 1.0), r.ratio)) < KS_CRIT
    assert not p["flip"].any() and not p["gray"].any()
    assert abs(p["jitter"].mean() - 0.8) < RATE_TOL


# --------------------------------------------------------------------- recipes and validation


def test_recipes():
    c, d = recipe_for("cifar10"), recipe_for("digits")
    assert c == Recipe(mean=c.mean, std=c.std)
    assert (c.scale, c.ratio, c.flip_p, c.jitter_p, c.gray_p) == (
        (0.08, 1.0),
        (3 / 4, 4 / 3),
        0.5,
        0.8,
        0.2,
    )
    assert (c.brightness, c.contrast, c.saturation, c.hue) == (0.4, 0.4, 0.4, 0.1)
    assert (d.size, len(d.mean), d.flip_p, d.saturation, d.hue, d.gray_p) == (8, 1, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="digits, cifar10"):
        recipe_for("mnist")


@pytest.mark.parametrize(
    "bad",
    [
        {"scale": (0.0, 1.0)},
        {"scale": (0.5, 0.2)},
        {"ratio": (2.0, 1.0)},
        {"flip_p": 1.5},
        {"gray_p": -0.1},
        {"brightness": -0.1},
        {"hue": 0.6},
        {"size": 0},
        {"std": (1.0, 0.0, 1.0)},
    ],
)
def test_recipe_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Recipe(**bad)


def test_input_errors():
    r = recipe_for("cifar10")
    with pytest.raises(TypeError, match="uint8"):
        augment(torch.zeros(2, 3, 32, 32), r, generator=gen())
    with pytest.raises(ValueError, match="channels"):
        augment(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), r, generator=gen())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        augment(torch.zeros(3, 32, 32, dtype=torch.uint8), r, generator=gen())
    with pytest.raises(ValueError, match="params are for 3 images"):
        apply_params(
            torch.zeros(2, 3, 32, 32, dtype=torch.uint8),
            sample_params(3, r, generator=gen()),
            r,
        )


# ------------------------------------------------------------------ shapes and determinism


@pytest.mark.parametrize(("name", "shape"), [("digits", (5, 1, 8, 8)), ("cifar10", (5, 3, 32, 32))])
def test_shapes_dtypes_and_determinism(name, shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen(1))
    r = recipe_for(name)
    a1, a2 = two_views(x, r, generator=gen(5))
    b1, b2 = two_views(x, r, generator=gen(5))
    c1, _ = two_views(x, r, generator=gen(6))
    assert a1.shape == a2.shape == shape and a1.dtype == torch.float32
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, c1)
    assert not torch.equal(a1, a2)  # the two views differ
    assert torch.isfinite(a1).all()


def test_output_size_can_differ_from_input():
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    r = dataclasses.replace(recipe_for("cifar10"), size=24)
    assert augment(x, r, generator=gen()).shape == (3, 3, 24, 24)


# ------------------------------------------------------------------------- exact geometry


@pytest.mark.parametrize(("c", "s"), [(1, 8), (3, 32)])
def test_identity_recipe_reproduces_input_exactly(c, s):
    x = torch.randint(0, 256, (6, c, s, s), dtype=torch.uint8, generator=gen(2))
    r = dataclasses.replace(IDENTITY, size=s, mean=(0.0,) * c, std=(1.0,) * c)
    out = augment(x, r, generator=gen())
    assert torch.equal(out, x.float() / 255)
    assert torch.equal((out * 255).round().to(torch.uint8), x)


def test_normalisation_uses_the_recipe_mean_and_std():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen(3))
    r = dataclasses.replace(IDENTITY, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    mean = torch.tensor(r.mean).view(1, 3, 1, 1)
    std = torch.tensor(r.std).view(1, 3, 1, 1)
    torch.testing.assert_close(augment(x, r, generator=gen()), (x / 255 - mean) / std)


def test_flipped_image_equals_torch_flip():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen(4))
    r = dataclasses.replace(IDENTITY, flip_p=1.0)
    assert torch.equal(augment(x, r, generator=gen()), x.flip(-1).float() / 255)


def _params(n: int, **over: torch.Tensor) -> dict[str, torch.Tensor]:
    """Identity parameters for n images, with some overridden."""
    p = {
        "crop": torch.tensor([[0.0, 0.0, 1.0, 1.0]]).repeat(n, 1),
        "flip": torch.zeros(n, dtype=torch.bool),
        "jitter": torch.zeros(n, dtype=torch.bool),
        "brightness": torch.ones(n),
        "contrast": torch.ones(n),
        "saturation": torch.ones(n),
        "hue": torch.zeros(n),
        "order": torch.arange(4).repeat(n, 1),
        "gray": torch.zeros(n, dtype=torch.bool),
    }
    p.update(over)
    return p


def test_aligned_crop_equals_pixel_slice():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen(5))
    r = dataclasses.replace(IDENTITY, size=16)
    p = _params(2, crop=torch.tensor([[0.5, 0.0, 0.5, 0.5], [0.25, 0.5, 0.5, 0.5]]))
    out = apply_params(x, p, r)
    assert torch.equal(out[0], x[0, :, 0:16, 16:32].float() / 255)
    assert torch.equal(out[1], x[1, :, 16:32, 8:24].float() / 255)


def test_crop_upsampling_matches_bilinear_interpolate():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen(6))
    p = _params(2, crop=torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.25, 0.5, 0.5, 0.5]]))
    out = apply_params(x, p, IDENTITY)  # 16x16 crops resized to 32x32
    for i, (top, left) in enumerate([(0, 0), (16, 8)]):
        crop = x[i : i + 1, :, top : top + 16, left : left + 16].float() / 255
        ref = F.interpolate(crop, size=32, mode="bilinear", align_corners=False)
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-6, rtol=0)


# ------------------------------------------------------------------------ colour operations


def test_brightness_closed_form():
    x = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8, generator=gen(7))
    r = dataclasses.replace(
        IDENTITY, jitter_p=1.0, contrast=0, saturation=0, hue=0, mean=(0.5,) * 3
    )
    f = torch.tensor([0.6, 1.0, 1.4])
    out = apply_params(x, _params(3, jitter=torch.ones(3, dtype=torch.bool), brightness=f), r)
    expected = (x.float() / 255 * f.view(3, 1, 1, 1)).clamp(0, 1) - 0.5
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    assert torch.equal(out[1], x[1].float() / 255 - 0.5)  # factor 1 is exactly the identity


def _loop_contrast(img: torch.Tensor, f: float) -> torch.Tensor:
    r, g, b = img.double()
    mean = (0.2989 * r + 0.587 * g + 0.114 * b).mean()
    return (f * img.double() + (1 - f) * mean).clamp(0, 1)


def _loop_saturation(img: torch.Tensor, f: float) -> torch.Tensor:
    r, g, b = img.double()
    gray = 0.2989 * r + 0.587 * g + 0.114 * b
    return (f * img.double() + (1 - f) * gray).clamp(0, 1)


def _loop_hue(img: torch.Tensor, shift: float) -> torch.Tensor:
    out = torch.empty_like(img, dtype=torch.float64)
    for i in range(img.shape[1]):
        for j in range(img.shape[2]):
            h, s, v = colorsys.rgb_to_hsv(*img[:, i, j].tolist())
            out[:, i, j] = torch.tensor(colorsys.hsv_to_rgb((h + shift) % 1.0, s, v))
    return out


@pytest.mark.parametrize(
    ("fn", "loop", "factors"),
    [
        (adjust_contrast, _loop_contrast, [0.0, 0.6, 1.4, 3.0]),
        (adjust_saturation, _loop_saturation, [0.0, 0.6, 1.4, 3.0]),
        (adjust_hue, _loop_hue, [-0.5, -0.1, 0.07, 0.5]),
    ],
)
def test_colour_ops_match_loop_references(fn, loop, factors):
    x = torch.rand(4, 3, 6, 6, generator=gen(8))
    x[0, :, 0, 0] = 0.5  # a grey pixel (hue undefined)
    x[1, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])  # pure colours
    x[2, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])
    out = fn(x, torch.tensor(factors))
    for i, f in enumerate(factors):
        torch.testing.assert_close(out[i].double(), loop(x[i], f), atol=2e-6, rtol=0)


def test_hsv_round_trip_and_known_colours():
    x = torch.rand(3, 3, 16, 16, generator=gen(9))
    torch.testing.assert_close(_from_hsv(*_hue(x)), x, atol=2e-6, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    for shift, rgb in [(1 / 3, [0.0, 1.0, 0.0]), (2 / 3, [0.0, 0.0, 1.0]), (-1 / 3, [0, 0, 1.0])]:
        out = adjust_hue(red, torch.tensor([shift])).flatten()
        torch.testing.assert_close(out, torch.tensor(rgb), atol=1e-6, rtol=0)


def test_one_channel_colour_ops():
    x = torch.rand(2, 1, 4, 4, generator=gen(10))
    assert torch.equal(adjust_saturation(x, torch.tensor([0.0, 2.0])), x)
    assert torch.equal(adjust_hue(x, torch.tensor([0.3, -0.2])), x)
    assert torch.equal(rgb_to_grayscale(x), x)
    torch.testing.assert_close(
        adjust_contrast(x, torch.tensor([0.0, 1.0]))[0], x[0].mean().expand(1, 4, 4)
    )
    torch.testing.assert_close(adjust_brightness(x, torch.tensor([0.5, 1.0]))[0], x[0] * 0.5)


def test_jitter_applies_ops_in_each_images_order():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=gen(11))
    r = dataclasses.replace(recipe_for("cifar10"), mean=(0.0,) * 3, std=(1.0,) * 3, size=8)
    drawn = sample_params(64, r, generator=gen(12))
    p = _params(64, **{k: drawn[k] for k in (*JITTER_OPS, "order", "jitter")})
    out = apply_params(x, p, r)
    fns = {"brightness": adjust_brightness, "contrast": adjust_contrast}
    fns |= {"saturation": adjust_saturation, "hue": adjust_hue}
    orders = {tuple(o) for o in p["order"].tolist()}
    assert len(orders) > 10  # many different orders are exercised
    for i in range(64):
        ref = x[i : i + 1].float() / 255
        if p["jitter"][i]:
            for k in p["order"][i].tolist():
                name = JITTER_OPS[k]
                ref = fns[name](ref, p[name][i : i + 1])
        torch.testing.assert_close(out[i : i + 1], ref, atol=1e-6, rtol=0)
    # Without the jitter flag an image is untouched, bit for bit.
    off = ~p["jitter"]
    assert off.any() and torch.equal(out[off], x[off].float() / 255)


def test_order_matters_so_the_order_test_is_meaningful():
    x = torch.rand(1, 3, 8, 8, generator=gen(13))
    f = torch.tensor([1.4])
    bc = adjust_contrast(adjust_brightness(x, f), f)
    cb = adjust_brightness(adjust_contrast(x, f), f)
    assert (bc - cb).abs().max() > 1e-3


def test_grayscale_makes_channels_equal_luma():
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen(14))
    r = dataclasses.replace(IDENTITY, gray_p=0.2)
    out = apply_params(x, _params(2, gray=torch.tensor([True, False])), r)
    xf = x.float() / 255
    luma = 0.2989 * xf[0, 0] + 0.587 * xf[0, 1] + 0.114 * xf[0, 2]
    for ch in range(3):
        torch.testing.assert_close(out[0, ch], luma)
    assert torch.equal(out[1], xf[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_for_the_same_cpu_generator():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=gen(15))
    r = recipe_for("cifar10")
    cpu = two_views(x, r, generator=gen(16))
    cuda = two_views(x.cuda(), r, generator=gen(16))
    for a, b in zip(cpu, cuda, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-4, rtol=1e-4)
    g = torch.Generator(device="cuda").manual_seed(0)
    v1, v2 = two_views(x.cuda(), r, generator=g)
    assert v1.device.type == "cuda" and v1.shape == (32, 3, 32, 32)
