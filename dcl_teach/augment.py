"""SimCLR augmentations for whole uint8 batches on the device, with no per-image Python loop.

The recipe of Chen et al. (2020) for CIFAR-10, in order: random resized crop, horizontal flip,
colour jitter (brightness, contrast, saturation, hue) applied with probability 0.8, random
grayscale with probability 0.2, then per-channel normalisation. (The Gaussian blur of the
ImageNet recipe is not used on 32x32 images, as in the paper's CIFAR experiments.)

Following airbench, :func:`sample_params` draws every per-image random number at once as
tensors from a ``torch.Generator`` and :func:`apply_params` applies them with broadcasting:

- crop + resize + flip are one bilinear ``F.grid_sample`` whose sampling grid is built by
  broadcasting each image's crop box (a flip is a negative x scale);
- brightness, contrast and saturation follow torchvision's definitions (scale, blend with the
  image's mean grey level, blend with the grey image; clamped to [0, 1] after each op);
- hue is a shift of H in an RGB -> HSV -> RGB round trip (the HSV formulas of torchvision and
  Python's ``colorsys``), not a YIQ rotation;
- the four jitter ops run in a random order per image, as in torchvision's ``ColorJitter``:
  each image draws a permutation, and at each of the four slots every op is applied to the
  subset of images that have it in that slot (16 masked batch ops, no loop over images).

Differences from torchvision, on purpose: crop boxes are continuous (fractions of the image
side) rather than rounded to whole pixels, and work is done in float32 without re-quantising
to uint8 between ops. Crops are resized bilinearly without antialiasing, which is exact for
the recipes here (a crop is never larger than the output).

Taught in notebook 06.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dcl_teach.data import mean_std, standardize

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma)
_GRAY = (0.2989, 0.587, 0.114)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes, then takes the full image
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # op k in params["order"]


@dataclass(frozen=True)
class Recipe:
    """One SimCLR augmentation recipe; the defaults are the CIFAR-10 recipe of SimCLR.

    Example:
        >>> Recipe().scale, recipe_for("digits").flip_p
        ((0.08, 1.0), 0.0)
    """

    size: int = 32  # output side in pixels (crops are resized to size x size)
    scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image, uniform
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop width/height, log-uniform in this range
    flip_p: float = 0.5  # probability of a horizontal flip
    jitter_p: float = 0.8  # probability that colour jitter (all four ops) is applied
    brightness: float = 0.4  # brightness factor uniform in [1 - s, 1 + s]
    contrast: float = 0.4  # contrast factor uniform in [1 - s, 1 + s]
    saturation: float = 0.4  # saturation factor uniform in [1 - s, 1 + s]
    hue: float = 0.1  # hue shift uniform in [-s, s] turns of the colour wheel (s <= 0.5)
    gray_p: float = 0.2  # probability of converting to grayscale (3 channels kept)
    mean: tuple[float, ...] = mean_std("cifar10")[0]  # per-channel mean subtracted at the end
    std: tuple[float, ...] = mean_std("cifar10")[1]  # per-channel std divided at the end

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1; got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi; got {self.ratio}")
        if self.size < 1:
            raise ValueError(f"size must be >= 1; got {self.size}")
        for field in ("flip_p", "jitter_p", "gray_p"):
            if not 0 <= getattr(self, field) <= 1:
                raise ValueError(f"{field} must be in [0, 1]; got {getattr(self, field)}")
        for field in ("brightness", "contrast", "saturation"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0; got {getattr(self, field)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5]; got {self.hue}")
        if len(self.mean) != len(self.std) or min(self.std) <= 0:
            raise ValueError(f"mean and std need one value per channel, std > 0; got {self}")


def recipe_for(name: str) -> Recipe:
    """The augmentation recipe used for a dataset.

    ``"cifar10"``: the full SimCLR recipe (the :class:`Recipe` defaults).

    ``"digits"`` (8x8, one channel) keeps only what makes sense for handwritten digits:

    - no flip: a mirrored 2, 3, 5, 7 or 9 is not that digit any more;
    - crop scale (0.5, 1): at 8x8 pixels a crop of 8% of the area is about 2x2 pixels and
      carries no digit; half the area still shows most strokes;
    - brightness and contrast only: saturation, hue and grayscale are undefined or the
      identity on one channel.

    Args:
        name: ``"digits"`` or ``"cifar10"``.

    Returns:
        The :class:`Recipe`.

    Raises:
        ValueError: unknown dataset name.

    Example:
        >>> r = recipe_for("digits")
        >>> r.size, r.scale, r.hue, r.mean
        (8, (0.5, 1.0), 0.0, (0.3056,))
    """
    mean, std = mean_std(name)  # raises ValueError on unknown names
    if name == "cifar10":
        return Recipe(mean=mean, std=std)
    return Recipe(
        size=8,
        scale=(0.5, 1.0),
        flip_p=0.0,
        saturation=0.0,
        hue=0.0,
        gray_p=0.0,
        mean=mean,
        std=std,
    )


def sample_params(
    n: int,
    recipe: Recipe,
    *,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """Draw the random parameters of ``n`` augmentations at once.

    Numbers are drawn on the generator's device in a fixed order, then moved to ``device``,
    so a seeded generator gives the same parameters on every device.

    Args:
        n: number of images.
        recipe: the :class:`Recipe`.
        generator: source of randomness.
        device: where the returned tensors live.

    Returns:
        A dict of per-image tensors:
        ``crop`` ``(n, 4)`` float ``[x0, y0, w, h]`` as fractions of the image side;
        ``flip`` ``(n,)`` bool; ``jitter`` ``(n,)`` bool (colour jitter applied);
        ``brightness``, ``contrast``, ``saturation`` ``(n,)`` float factors;
        ``hue`` ``(n,)`` float shift; ``order`` ``(n, 4)`` int64 permutation of the jitter ops
        (indices into ``JITTER_OPS``); ``gray`` ``(n,)`` bool.

    Raises:
        ValueError: ``n < 0``.

    Example:
        >>> p = sample_params(5, Recipe(), generator=torch.Generator().manual_seed(0))
        >>> p["crop"].shape, p["flip"].dtype, p["order"].shape
        (torch.Size([5, 4]), torch.bool, torch.Size([5, 4]))
    """
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    g = generator
    gdev = generator.device

    def uniform(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=g, device=gdev)

    # Random resized crop, as torchvision: propose up to 10 (area, ratio) pairs per image and
    # keep the first box that fits inside the image; the full image if none does.
    area = uniform(n, _CROP_ATTEMPTS, lo=recipe.scale[0], hi=recipe.scale[1])  # (n, 10)
    log_lo, log_hi = math.log(recipe.ratio[0]), math.log(recipe.ratio[1])
    ratio = torch.exp(uniform(n, _CROP_ATTEMPTS, lo=log_lo, hi=log_hi))  # (n, 10)
    w_all = torch.sqrt(area * ratio)  # (n, 10) width / image width
    h_all = torch.sqrt(area / ratio)  # (n, 10) height / image height
    fits = (w_all <= 1) & (h_all <= 1)  # (n, 10)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # (n, 1) first fitting attempt
    any_fit = fits.any(dim=1)  # (n,)
    w = torch.where(any_fit, w_all.gather(1, first).squeeze(1), 1.0)  # (n,)
    h = torch.where(any_fit, h_all.gather(1, first).squeeze(1), 1.0)  # (n,)
    x0 = uniform(n) * (1 - w)  # (n,)
    y0 = uniform(n) * (1 - h)  # (n,)
    crop = torch.stack([x0, y0, w, h], dim=1)  # (n, 4)

    flip = uniform(n) < recipe.flip_p  # (n,)
    jitter = uniform(n) < recipe.jitter_p  # (n,)
    factors = {
        name: uniform(n, lo=max(0.0, 1 - s), hi=1 + s)  # (n,)
        for name, s in (
            ("brightness", recipe.brightness),
            ("contrast", recipe.contrast),
            ("saturation", recipe.saturation),
        )
    }
    hue = uniform(n, lo=-recipe.hue, hi=recipe.hue)  # (n,)
    order = torch.argsort(uniform(n, len(JITTER_OPS)), dim=1)  # (n, 4) random permutations
    gray = uniform(n) < recipe.gray_p  # (n,)

    params = {"crop": crop, "flip": flip, "jitter": jitter, **factors, "hue": hue}
    params |= {"order": order, "gray": gray}
    return {k: v.to(device) for k, v in params.items()}


# ------------------------------------------------------------------ colour ops on (B, C, H, W)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """Luma of float RGB images ``(B, 3, H, W)`` -> ``(B, 1, H, W)``; one channel passes through.

    Example:
        >>> rgb_to_grayscale(torch.ones(1, 3, 2, 2)).shape
        torch.Size([1, 1, 2, 2])
    """
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)  # (B, H, W) each
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(1)  # (B, 1, H, W)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)  # (B, C, H, W)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's brightness: ``clamp(factor * x, 0, 1)`` per image.

    Example:
        >>> adjust_brightness(torch.full((1, 1, 1, 1), 0.6), torch.tensor([2.0])).item()
        1.0
    """
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)  # (B, C, H, W)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's contrast: blend each image with its mean grey level.

    Example:
        >>> adjust_contrast(torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([0.0])).tolist()
        [[[[0.5, 0.5]]]]
    """
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's saturation: blend each image with its grayscale version.

    Example:
        >>> red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> adjust_saturation(red, torch.tensor([0.0])).flatten().tolist()  # fully desaturated
        [0.2989..., 0.2989..., 0.2989...]
    """
    if x.shape[1] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor)


def _hue(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue, saturation and value ``(B, H, W)`` each of float RGB ``(B, 3, H, W)``."""
    r, g, b = x.unbind(dim=1)  # (B, H, W) each
    maxc = x.amax(dim=1)  # (B, H, W) value V
    chroma = maxc - x.amin(dim=1)  # (B, H, W)
    flat = chroma == 0  # grey pixels: hue 0, saturation 0
    sat = chroma / torch.where(flat, 1.0, maxc)  # (B, H, W)
    inv = 1.0 / torch.where(flat, 1.0, chroma)  # (B, H, W)
    # colorsys: the sector of the largest channel (ties: R before G before B) plus the
    # normalised difference of the other two.
    hue = torch.where(
        maxc == r, (g - b) * inv, torch.where(maxc == g, 2.0 + (b - r) * inv, 4.0 + (r - g) * inv)
    )  # (B, H, W) in [-1, 5]
    hue = torch.remainder(hue / 6.0, 1.0)  # (B, H, W)
    return hue, sat, maxc


def _from_hsv(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """float RGB ``(B, 3, H, W)`` from hue, saturation, value ``(B, H, W)`` each.

    Channel n in (R, G, B) = (5, 3, 1) is ``v - v s clamp(min(k, 4 - k), 0, 1)`` with
    ``k = (n + 6 h) mod 6``: the piecewise-linear form of colorsys' six-sector table.
    """
    n = torch.tensor([5.0, 3.0, 1.0], device=h.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)  # (B, 3, H, W)
    ramp = torch.minimum(k, 4.0 - k).clamp(0, 1)  # (B, 3, H, W)
    v, s = v.unsqueeze(1), s.unsqueeze(1)  # (B, 1, H, W) each
    return v - v * s * ramp  # (B, 3, H, W)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image by ``shift`` turns (RGB -> HSV -> RGB).

    Example:
        >>> red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
        >>> adjust_hue(red, torch.tensor([1 / 3])).flatten().tolist()
        [0.0, 1.0, 0.0]
    """
    if x.shape[1] == 1:
        return x
    h, s, v = _hue(x)  # (B, H, W) each
    return _from_hsv(h + shift.view(-1, 1, 1), s, v)  # (B, 3, H, W); k is taken mod 6


_JITTER_FNS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def _clamp_to_box(g: torch.Tensor, start: torch.Tensor, size: torch.Tensor, n: int) -> torch.Tensor:
    """Clamp normalised sample positions ``g (B, S)`` to the first and last pixel centres of the
    box ``[start, start + size]`` (fractions of an image side of ``n`` pixels)."""
    centre = (2 * start + size - 1)[:, None]  # (B, 1)
    lo = torch.minimum((2 * start - 1 + 1 / n)[:, None], centre)  # (B, 1)
    hi = torch.maximum((2 * (start + size) - 1 - 1 / n)[:, None], centre)  # (B, 1)
    return torch.maximum(torch.minimum(g, hi), lo)  # (B, S)


def _check_images(images: torch.Tensor, recipe: Recipe) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        got = images.dtype if isinstance(images, torch.Tensor) else type(images).__name__
        raise TypeError(f"images must be a uint8 tensor (B, C, H, W); got {got}")
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    if images.shape[1] != len(recipe.mean):
        raise ValueError(
            f"images have {images.shape[1]} channels but the recipe normalises "
            f"{len(recipe.mean)}; use recipe_for(dataset name)"
        )


def apply_params(
    images: torch.Tensor, params: dict[str, torch.Tensor], recipe: Recipe
) -> torch.Tensor:
    """Apply drawn augmentation parameters to a uint8 batch.

    Args:
        images: ``uint8 (B, C, H, W)``.
        params: output of :func:`sample_params` for ``B`` images (moved to the images'
            device if needed).
        recipe: the recipe the parameters were drawn for (output size, normalisation, which
            jitter ops are active).

    Returns:
        ``float32 (B, C, size, size)``, normalised with ``recipe.mean`` / ``recipe.std``.

    Raises:
        TypeError: images are not a uint8 tensor.
        ValueError: wrong shape, channel count or number of parameters.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        >>> apply_params(x, sample_params(4, Recipe(), generator=g), Recipe()).shape
        torch.Size([4, 3, 32, 32])
    """
    _check_images(images, recipe)
    b, c = images.shape[:2]
    if params["crop"].shape != (b, 4):
        raise ValueError(f"params are for {params['crop'].shape[0]} images; got {b} images")
    params = {k: v.to(images.device) for k, v in params.items()}  # no-op when already there
    x = images.float() / 255.0  # (B, C, H, W) in [0, 1]

    # Crop, resize and flip as one bilinear resampling. Output pixel centres in normalised
    # coordinates (align_corners=False) are u_j = (2j + 1) / size - 1; the crop box
    # [x0, x0 + w] maps them to x = (2 x0 + w - 1) + w u, and a flip negates the w u term.
    # Samples are clamped to the centres of the crop's edge pixels, which is what cutting the
    # crop out first and resizing it with F.interpolate (torchvision) does at the border.
    s = recipe.size
    u = (2 * torch.arange(s, device=x.device, dtype=torch.float32) + 1) / s - 1  # (S,)
    x0, y0, w, h = params["crop"].float().unbind(dim=1)  # (B,) each
    sign = 1.0 - 2.0 * params["flip"].float()  # (B,) -1 where flipped
    gx = _clamp_to_box((2 * x0 + w - 1)[:, None] + (sign * w)[:, None] * u, x0, w, images.shape[3])
    gy = _clamp_to_box((2 * y0 + h - 1)[:, None] + h[:, None] * u, y0, h, images.shape[2])
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    # grid: (B, S, S, 2) with (x, y) last; border padding = edge clamping as in F.interpolate
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Colour jitter in a random order per image; images without jitter are never touched.
    strengths = (recipe.brightness, recipe.contrast, recipe.saturation, recipe.hue)
    factors = [params[name] for name in JITTER_OPS]
    for slot in range(len(JITTER_OPS)):
        for k, fn in enumerate(_JITTER_FNS):
            if strengths[k] == 0 or (k >= 2 and c == 1):
                continue  # torchvision skips ops of strength 0; no colour on one channel
            sel = torch.nonzero(params["jitter"] & (params["order"][:, slot] == k)).squeeze(1)
            if sel.numel():
                x[sel] = fn(x[sel], factors[k][sel])  # (|sel|, C, S, S)

    if c == 3 and recipe.gray_p > 0:
        gray = rgb_to_grayscale(x).expand_as(x)  # (B, 3, S, S)
        x = torch.where(params["gray"].view(-1, 1, 1, 1), gray, x)

    return standardize(x, recipe.mean, recipe.std)  # (B, C, S, S)


def augment(images: torch.Tensor, recipe: Recipe, *, generator: torch.Generator) -> torch.Tensor:
    """One random augmentation of every image in a uint8 batch.

    Args:
        images: ``uint8 (B, C, H, W)`` on any device.
        recipe: the :class:`Recipe`.
        generator: source of randomness (any device; parameters are moved to the images).

    Returns:
        ``float32 (B, C, size, size)``, normalised.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
        >>> augment(x, recipe_for("digits"), generator=g).shape
        torch.Size([4, 1, 8, 8])
    """
    _check_images(images, recipe)
    params = sample_params(images.shape[0], recipe, generator=generator, device=images.device)
    return apply_params(images, params, recipe)


def two_views(
    images: torch.Tensor, recipe: Recipe, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of every image: the positive pairs ``(x1, x2)``.

    Both views are made in one batched pass over ``2B`` images.

    Args:
        images: ``uint8 (B, C, H, W)``.
        recipe: the :class:`Recipe`.
        generator: source of randomness.

    Returns:
        ``(v1, v2)``, each ``float32 (B, C, size, size)``; row i of both comes from image i.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        >>> v1, v2 = two_views(x, Recipe(), generator=g)
        >>> v1.shape == v2.shape == (4, 3, 32, 32), bool((v1 != v2).any())
        (True, True)
    """
    _check_images(images, recipe)
    both = torch.cat([images, images])  # (2B, C, H, W)
    views = augment(both, recipe, generator=generator)  # (2B, C, S, S)
    v1, v2 = views.chunk(2)  # (B, C, S, S) each
    return v1, v2
