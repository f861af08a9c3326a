"""Encoders and the projection head trained by the contrastive losses.

Two encoders, one per dataset: the CIFAR-style ResNet-18 that the DCL paper and every public
reimplementation train on CIFAR-10 (3x3 stem, stride 1, no max-pool, so a 32x32 image keeps
its resolution through the first stage), and a small CNN for the 8x8 scikit-learn digits that
trains in seconds on a CPU. Both end in global average pooling and give one feature vector per
image. The kNN monitor and the linear probe read these features; the loss reads the output of
the projection head on top of them (SimCLR's recipe).

``norm="none"`` swaps every BatchNorm for an identity. BatchNorm statistics depend on how a
batch is split across processes, so only the BatchNorm-free variant trains bit-for-bit like a
single process under data parallelism (see ``tests/test_train.py``).
"""

from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "none")

# dataset -> (encoder, input channels, default feature dimension)
ARCHITECTURES = {"digits": ("small_cnn", 1, 128), "cifar10": ("resnet18", 3, 512)}


def _norm(norm: str, channels: int, *, dims: int = 2) -> nn.Module:
    if norm == "none":
        return nn.Identity()
    return nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _resnet_width(feature_dim: int | None, width: int | None) -> int:
    """The base width of a ResNet18 given its feature_dim, its width, both or neither."""
    for name, value in (("feature_dim", feature_dim), ("width", width)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise ValueError(f"ResNet18 {name} must be a positive integer, got {value!r}")
    if feature_dim is not None and feature_dim % 8:
        raise ValueError(f"ResNet18 feature_dim must be a multiple of 8, got {feature_dim}")
    if width is None:
        return 64 if feature_dim is None else feature_dim // 8
    if feature_dim is not None and feature_dim != 8 * width:
        raise ValueError(
            f"ResNet18 features are its last stage, 8 x width wide: width {width} gives "
            f"feature_dim {8 * width}, got feature_dim {feature_dim} (give only one of them)"
        )
    return width


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al., 2016)."""

    def __init__(self, c_in: int, c_out: int, *, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"  # a conv followed by BatchNorm needs no bias
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), _norm(norm, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))  # (B, c_out, H/s, W/s)
        out = self.bn2(self.conv2(out))  # (B, c_out, H/s, W/s)
        return torch.relu(out + self.shortcut(x))  # (B, c_out, H/s, W/s)


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 encoder: 3x3 stride-1 stem, no max-pool, BasicBlocks [2, 2, 2, 2].

    The four stages are ``width, 2 width, 4 width, 8 width`` channels wide and the feature
    vector is the last stage pooled, so ``feature_dim == 8 * width``: give either one. With
    neither, ``width=64`` is the standard ResNet-18 (11.2 M parameters); ``width=32`` has a
    quarter of its parameters and FLOPs (the ``colab`` preset of :mod:`dcl_teach.train`).

    Args:
        in_channels: image channels (3 for CIFAR-10).
        feature_dim: width F of the last stage and of the feature vector (512 is ResNet-18).
        width: channels of the stem and first stage (64 is ResNet-18).
        norm: ``"batch"`` or ``"none"``.

    Raises:
        ValueError: a width that is not a positive integer, a feature_dim that is not a
            multiple of 8, or both given with ``feature_dim != 8 * width``.

    Example:
        >>> ResNet18(feature_dim=64)(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 64])
        >>> ResNet18(width=32).feature_dim
        256

    Taught in notebook 06.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        feature_dim: int | None = None,
        width: int | None = None,
        norm: str = "batch",
    ):
        super().__init__()
        _check_norm(norm)
        width = _resnet_width(feature_dim, width)
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=norm == "none"),
            _norm(norm, widths[0]),
            nn.ReLU(inplace=True),
        )  # CIFAR stem: no 7x7 stride-2 conv and no max-pool, a 32x32 input stays 32x32
        stages, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(c_in, c_out, stride=stride, norm=norm),
                    BasicBlock(c_out, c_out, stride=1, norm=norm),
                )
            )
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.width = width
        self.feature_dim = widths[-1]
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))  # (B, F, H/8, W/8)
        return self.pool(x).flatten(1)  # (B, F)


class SmallCNN(nn.Module):
    """Three-conv encoder for 8x8 digits: 3x3 conv, max-pool to 4x4, 3x3 conv, 4x4 conv to 1x1.

    The last convolution spans the whole 4x4 map, so the features keep *where* strokes are (a
    global average pool would throw that away, and on 8x8 digits the layout is the class).

    Args:
        in_channels: image channels (1 for digits).
        feature_dim: width of the last conv and of the feature vector; the first two convs
            are ``feature_dim // 4`` and ``feature_dim // 2`` wide.
        norm: ``"batch"`` or ``"none"``.

    Example:
        >>> SmallCNN()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 128])

    Taught in notebook 06.
    """

    def __init__(self, *, in_channels: int = 1, feature_dim: int = 128, norm: str = "batch"):
        super().__init__()
        _check_norm(norm)
        if feature_dim < 4 or feature_dim % 4:
            raise ValueError(f"SmallCNN feature_dim must be a multiple of 4, got {feature_dim}")
        c1, c2, bias = feature_dim // 4, feature_dim // 2, norm == "none"
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=bias),  # (B, c1, 8, 8)
            _norm(norm, c1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (B, c1, 4, 4)
            nn.Conv2d(c1, c2, 3, padding=1, bias=bias),  # (B, c2, 4, 4)
            _norm(norm, c2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, feature_dim, 4, bias=bias),  # (B, F, 1, 1)
            _norm(norm, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.feature_dim = feature_dim
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (8, 8):
            raise ValueError(f"SmallCNN expects 8x8 images, got {tuple(x.shape[-2:])}")
        return self.net(x).flatten(1)  # (B, F)


class ProjectionHead(nn.Sequential):
    """SimCLR's 2-layer MLP head: Linear - BN - ReLU - Linear.

    Args:
        in_dim: feature dimension F of the encoder.
        hidden_dim: width of the hidden layer (F when None).
        out_dim: dimension D of the embeddings the loss sees (128 in SimCLR and DCL).
        norm: ``"batch"`` or ``"none"``.

    Example:
        >>> ProjectionHead(64, out_dim=16)(torch.zeros(3, 64)).shape
        torch.Size([3, 16])

    Taught in notebook 06.
    """

    def __init__(
        self, in_dim: int, *, hidden_dim: int | None = None, out_dim: int = 128, norm="batch"
    ):
        _check_norm(norm)
        hidden = hidden_dim or in_dim
        super().__init__(
            nn.Linear(in_dim, hidden, bias=norm == "none"),  # (B, hidden)
            _norm(norm, hidden, dims=1),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_dim),  # (B, D)
        )


class ContrastiveModel(nn.Module):
    """An encoder with a projection head on top: ``features`` for evaluation, ``forward`` for the loss.

    Args:
        encoder: maps images (B, C, H, W) to features (B, F).
        head: maps features (B, F) to embeddings z (B, D).

    Example:
        >>> model = ContrastiveModel(SmallCNN(feature_dim=32), ProjectionHead(32, out_dim=8))
        >>> x = torch.zeros(4, 1, 8, 8)
        >>> model.features(x).shape, model(x).shape
        (torch.Size([4, 32]), torch.Size([4, 8]))

    Taught in notebook 06.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features h (B, F), the representation kNN and the linear probe evaluate."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projected embeddings z (B, D), the input of the contrastive loss (not normalised)."""
        return self.head(self.encoder(x))


def build_model(
    dataset: str,
    *,
    feature_dim: int | None = None,
    proj_dim: int = 128,
    norm: str = "batch",
    width: int | None = None,
) -> ContrastiveModel:
    """The encoder and head used for ``dataset``: ResNet-18 for CIFAR-10, a small CNN for digits.

    Args:
        dataset: ``"digits"`` (1x8x8) or ``"cifar10"`` (3x32x32).
        feature_dim: feature width F; None gives 128 for digits and ``8 * width`` (512) for
            ResNet-18.
        proj_dim: output dimension D of the projection head.
        norm: ``"batch"`` (BatchNorm everywhere) or ``"none"`` (no normalisation layers).
        width: ResNet-18 base channels (64 = standard, None: 64 or ``feature_dim // 8``);
            CIFAR-10 only.

    Returns:
        A freshly initialised :class:`ContrastiveModel` (seed torch first for repeatable weights).

    Raises:
        ValueError: for an unknown dataset or norm, a non-positive dimension, a width for
            digits, or a width that disagrees with feature_dim.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("digits", proj_dim=32)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 32])
        >>> build_model("cifar10", width=16).encoder.feature_dim
        128

    Taught in notebook 06.
    """
    if dataset not in ARCHITECTURES:
        raise ValueError(f"dataset must be one of {sorted(ARCHITECTURES)}, got {dataset!r}")
    arch, in_channels, default_dim = ARCHITECTURES[dataset]
    if proj_dim <= 0 or (feature_dim is not None and feature_dim <= 0):
        raise ValueError(
            f"feature_dim and proj_dim must be positive, got {feature_dim} and {proj_dim}"
        )
    if arch == "resnet18":
        encoder: nn.Module = ResNet18(
            in_channels=in_channels, feature_dim=feature_dim, width=width, norm=norm
        )
    elif width is not None:
        raise ValueError(
            f"width is the ResNet-18's base width (cifar10), got {width!r} for "
            f"{dataset!r}: set feature_dim instead"
        )
    else:
        feature_dim = default_dim if feature_dim is None else feature_dim
        encoder = SmallCNN(in_channels=in_channels, feature_dim=feature_dim, norm=norm)
    head = ProjectionHead(encoder.feature_dim, out_dim=proj_dim, norm=norm)
    return ContrastiveModel(encoder, head)


def _init_weights(module: nn.Module) -> None:
    # He initialisation for convolutions, as in torchvision's ResNet.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
