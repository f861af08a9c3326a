"""Tests for dcl_teach.config: the checks of TrainConfig, its presets and its help texts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dcl_teach.config import BOOKKEEPING_FIELDS, RESUME_FREE_FIELDS, TrainConfig


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("loss", "ntxent", "loss must be one of"),
        ("dataset", "mnist", "dataset must be one of"),
        ("tau", 0.0, "tau must be a finite number > 0"),
        ("tau", float("nan"), "tau must be a finite number > 0"),
        ("sigma", -1.0, "sigma must be"),
        ("lr", 0, "lr must be"),
        ("batch_size", 1, "at least 2"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("epochs", 2.5, "epochs must be a positive integer"),
        ("amp", "fp8", "amp must be one of"),
        ("norm", "group", "norm must be one of"),
        ("momentum", 1.0, "momentum"),
        ("max_steps", 0, "max_steps must be None or a positive integer"),
        ("num_labels_per_class", -1, "num_labels_per_class"),
        ("checkpoint_every", -1, "checkpoint_every"),
        ("device", "tpu:x", "device must be"),
        ("width", 0, "width must be None or a positive integer"),
        ("width", 32, "width is the ResNet-18's base width"),  # digits has no ResNet
    ],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_width_and_feature_dim_must_agree():
    assert TrainConfig(dataset="cifar10", width=32, feature_dim=256).width == 32
    with pytest.raises(ValueError, match="width 32 gives 256, got feature_dim=512"):
        TrainConfig(dataset="cifar10", width=32, feature_dim=512)


def test_for_dataset_rejects_unknown_datasets():
    with pytest.raises(ValueError, match="dataset must be one of .*, got 'mnist'"):
        TrainConfig.for_dataset("mnist")


def test_config_is_frozen_and_replaceable():
    c = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.tau = 0.5
    d = dataclasses.replace(c, loss="infonce", batch_size=32)
    assert (d.loss, d.batch_size, c.loss) == ("infonce", 32, "dcl")
    with pytest.raises(ValueError, match="loss"):
        dataclasses.replace(c, loss="x")


def test_cifar10_preset():
    c = TrainConfig.for_dataset("cifar10", loss="infonce")
    assert (c.dataset, c.epochs, c.batch_size, c.loss, c.knn_k) == (
        "cifar10",
        200,
        256,
        "infonce",
        200,
    )
    assert TrainConfig.for_dataset("digits") == TrainConfig()


def test_presets_digits_cifar10_colab():
    assert TrainConfig.preset("digits") == TrainConfig() == TrainConfig.for_dataset("digits")
    cifar = TrainConfig.preset("cifar10")
    assert cifar == TrainConfig.for_dataset("cifar10")
    assert (cifar.epochs, cifar.batch_size, cifar.lr, cifar.warmup_epochs) == (200, 256, 0.12, 10)
    assert cifar.width is None and cifar.amp == "bf16"  # the standard ResNet-18
    colab = TrainConfig.preset("colab")
    assert (colab.dataset, colab.width, colab.epochs, colab.batch_size) == ("cifar10", 32, 10, 256)
    assert (colab.amp, colab.channels_last, colab.device) == ("fp16", True, "cuda")
    assert colab.out_dir is None and colab.checkpoint_every == 0  # checkpoints at epoch ends
    assert TrainConfig.preset("colab", batch_size=512).batch_size == 512  # overrides win
    with pytest.raises(ValueError, match="preset must be one of .*'colab'.*, got 'imagenet'"):
        TrainConfig.preset("imagenet")
    with pytest.raises(ValueError, match="width"):
        TrainConfig.preset("colab", dataset="digits")


def test_colab_preset_builds_a_width_32_resnet18():
    from dcl_teach.models import ResNet18, build_model

    c = TrainConfig.preset("colab")
    model = build_model(c.dataset, feature_dim=c.feature_dim, proj_dim=c.proj_dim, width=c.width)
    assert isinstance(model.encoder, ResNet18) and model.encoder.feature_dim == 256
    full = sum(p.numel() for p in build_model("cifar10").encoder.parameters())
    small = sum(p.numel() for p in model.encoder.parameters())
    assert 0.24 < small / full < 0.26  # convolutions scale as width^2: a quarter
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 128)


def test_every_field_carries_its_help_text():
    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata.get("help", "")) > 10, f"{f.name} has no help text"


def test_bookkeeping_fields_are_resume_free_and_all_exist():
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(BOOKKEEPING_FIELDS) <= set(RESUME_FREE_FIELDS) <= names
    # what may differ on resume but not in a cache: the kernels (device...) and the length
    assert set(RESUME_FREE_FIELDS) - set(BOOKKEEPING_FIELDS) == {
        "device",
        "compile",
        "channels_last",
        "max_steps",
    }
