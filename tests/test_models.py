"""Tests for dcl_teach.models: shapes, the ResNet-18 CIFAR stem, parameter counts, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dcl_teach.models import (
    ContrastiveModel,
    ProjectionHead,
    ResNet18,
    SmallCNN,
    build_model,
)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_resnet18_cifar_has_the_standard_parameter_count():
    # torchvision's resnet18 has 11,689,512 parameters; the CIFAR variant swaps the 7x7 stem
    # (9,408 weights) for a 3x3 one (1,728) and has no fc layer (513,000): 11,168,832.
    model = build_model("cifar10")
    assert n_params(model.encoder) == 11_689_512 - 9_408 + 1_728 - 513_000
    assert 11.1e6 < n_params(model.encoder) < 11.3e6
    # head: Linear(512, 512, no bias) + BN(512) + Linear(512, 128)
    assert n_params(model.head) == 512 * 512 + 2 * 512 + 512 * 128 + 128


def test_resnet18_stem_is_3x3_stride_1_without_max_pool():
    enc = ResNet18()
    conv = enc.stem[0]
    assert isinstance(conv, nn.Conv2d)
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in enc.modules())
    # The stem keeps a 32x32 image at 32x32; the stages halve it three times, to 4x4.
    x = torch.zeros(2, 3, 32, 32)
    assert enc.stem(x).shape == (2, 64, 32, 32)
    assert enc.stages(enc.stem(x)).shape == (2, 512, 4, 4)


def test_resnet18_has_basic_blocks_2_2_2_2():
    enc = ResNet18()
    assert [len(stage) for stage in enc.stages] == [2, 2, 2, 2]
    strides = [stage[0].conv1.stride[0] for stage in enc.stages]
    assert strides == [1, 2, 2, 2]


@pytest.mark.parametrize(
    ("dataset", "shape", "feature_dim"),
    [("digits", (1, 8, 8), 128), ("cifar10", (3, 32, 32), 512)],
)
def test_build_model_shapes(dataset, shape, feature_dim):
    torch.manual_seed(0)
    model = build_model(dataset, proj_dim=32)
    x = torch.randn(4, *shape)
    assert model.features(x).shape == (4, feature_dim)
    assert model(x).shape == (4, 32)
    assert model.encoder.feature_dim == feature_dim


def test_feature_dim_scales_the_widths():
    assert build_model("cifar10", feature_dim=64).features(torch.zeros(2, 3, 32, 32)).shape == (
        2,
        64,
    )
    assert build_model("digits", feature_dim=16).features(torch.zeros(2, 1, 8, 8)).shape == (2, 16)


@pytest.mark.parametrize("width", [8, 16, 32, 64])
def test_resnet18_width_sets_every_stage_and_the_parameter_count(width):
    # Counted by hand for base width w (stages w, 2w, 4w, 8w): 3x3 convs 2724 w^2 in all
    # (stage 1: 4 x 9w^2; stage 2: 18 + 36 + 2 (1x1 shortcut) + 2 x 36 = 128 w^2; stages 3
    # and 4: 4x and 16x stage 2), and 177 w from the stem conv (27 w) and BatchNorm (150 w).
    # At w = 64 this is the standard 11,168,832 of the test above.
    enc = ResNet18(width=width)
    assert n_params(enc) == 2724 * width**2 + 177 * width
    assert [stage[0].conv1.out_channels for stage in enc.stages] == [
        width,
        2 * width,
        4 * width,
        8 * width,
    ]
    x = torch.zeros(2, 3, 32, 32)
    assert enc.stem(x).shape == (2, width, 32, 32)
    assert enc.stages(enc.stem(x)).shape == (2, 8 * width, 4, 4)
    assert enc(x).shape == (2, 8 * width) and enc.feature_dim == 8 * width


def test_build_model_width_sizes_encoder_and_head():
    model = build_model("cifar10", width=32, proj_dim=64)
    assert model.encoder.width == 32 and model.encoder.feature_dim == 256
    assert model.head[0].in_features == 256 and model.head[-1].out_features == 64
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 64)
    # width and feature_dim are two names for one choice: consistent values are accepted
    assert n_params(build_model("cifar10", width=32, feature_dim=256, proj_dim=64)) == n_params(
        model
    )
    assert build_model("cifar10").encoder.width == 64  # the standard ResNet-18


def test_same_seed_same_weights_at_any_width_spelling():
    # width=16 and feature_dim=128 build the same layers in the same order: the same weights.
    torch.manual_seed(1)
    a = build_model("cifar10", width=16)
    torch.manual_seed(1)
    b = build_model("cifar10", feature_dim=128)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_channels_last_model_gives_the_same_features_on_the_cpu():
    torch.manual_seed(0)
    model = build_model("cifar10", width=8).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_features_are_what_the_head_projects():
    torch.manual_seed(0)
    model = build_model("digits", feature_dim=32, proj_dim=8).eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(model(x), model.head(model.features(x)))


def test_projection_head_is_linear_bn_relu_linear():
    head = ProjectionHead(64, out_dim=16)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head[-1].out_features == 16


def test_norm_none_has_no_batchnorm_and_the_same_outputs_for_any_split():
    torch.manual_seed(0)
    model = build_model("digits", norm="none").train()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(6, 1, 8, 8)
    # Without BatchNorm an image's embedding does not depend on the rest of the batch.
    torch.testing.assert_close(model(x), torch.cat([model(x[:2]), model(x[2:])]))


def test_batchnorm_model_depends_on_the_batch_in_training_mode():
    # The reason multi-process training with BatchNorm is not bit-equal to one process.
    torch.manual_seed(0)
    model = build_model("digits").train()
    x = torch.randn(6, 1, 8, 8)
    assert not torch.allclose(model(x)[:2], model(x[:2]))


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_model("digits")
    torch.manual_seed(3)
    b = build_model("digits")
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = build_model("digits", feature_dim=16, proj_dim=8)
    model(torch.randn(4, 1, 8, 8)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "mnist"}, "dataset must be one of"),
        ({"dataset": "digits", "norm": "layer"}, "norm must be one of"),
        ({"dataset": "digits", "proj_dim": 0}, "must be positive"),
        ({"dataset": "digits", "feature_dim": 30}, "multiple of 4"),
        ({"dataset": "cifar10", "feature_dim": 100}, "multiple of 8"),
        ({"dataset": "cifar10", "width": 0}, "width must be a positive integer, got 0"),
        ({"dataset": "cifar10", "width": 32, "feature_dim": 512}, "width 32 gives feature_dim 256"),
        ({"dataset": "digits", "width": 32}, "width is the ResNet-18's base width"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


def test_small_cnn_rejects_other_image_sizes():
    with pytest.raises(ValueError, match="8x8"):
        SmallCNN()(torch.zeros(1, 1, 16, 16))


def test_contrastive_model_wraps_any_encoder_and_head():
    model = ContrastiveModel(nn.Flatten(), nn.Linear(4, 2))
    assert model(torch.zeros(3, 1, 2, 2)).shape == (3, 2)
    assert model.features(torch.zeros(3, 1, 2, 2)).shape == (3, 4)
