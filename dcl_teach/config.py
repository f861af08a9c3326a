"""The training configuration: one frozen dataclass, its named presets and its checks.

Every field carries its help text (``dataclasses.fields(TrainConfig)[i].metadata["help"]``),
which the command line shows beside the flag, so the two cannot drift apart.

Taught in notebook 06.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from dcl_teach.losses import LOSSES
from dcl_teach.models import ARCHITECTURES, NORMS

AMP_MODES = ("bf16", "fp16", "off")

# Fields that change neither what a run computes nor its numbers, only where files go and what
# is shown: a cached result (dcl_teach.cache) is the same whatever their values.
BOOKKEEPING_FIELDS = (
    "out_dir",
    "data_root",
    "download",
    "progress",
    "eval_batch_size",
    "checkpoint_every",
)
# A checkpoint may also be resumed with other values of these: they change the last digits (the
# device, compilation and memory layout pick other kernels) or how far the run goes
# (max_steps), not what it computes. A cache must not mix them: a result on another device or
# cut short by max_steps is not the same result.
RESUME_FREE_FIELDS = (*BOOKKEEPING_FIELDS, "device", "compile", "channels_last", "max_steps")


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default and the help text the command line shows for it."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults: DCL on digits, about 20 s on one CPU core.

    Use :meth:`preset` for a named starting point (``"digits"``, ``"cifar10"``, ``"colab"``)
    and ``dataclasses.replace`` for variants.

    Example:
        >>> TrainConfig().loss, TrainConfig.preset("cifar10").epochs
        ('dcl', 200)
        >>> TrainConfig(loss="ntxent")
        Traceback (most recent call last):
        ...
        ValueError: loss must be one of ['dcl', 'dclw', 'infonce'], got 'ntxent'

    Taught in notebook 06.
    """

    dataset: str = option("digits", '"digits" (bundled 8x8, CPU-friendly) or "cifar10" (download)')
    loss: str = option("dcl", '"infonce" (SimCLR), "dcl" or "dclw"')
    tau: float = option(0.1, "temperature; 0.1 for all three losses, as in the DCL implementations")
    sigma: float = option(0.5, "DCLW weighting width (ignored by the other losses)")
    batch_size: int = option(128, "images per step over all ranks (2x as many views)")
    epochs: int = option(50, "passes over the training split (digits: about 20 s on one CPU core)")
    lr: float = option(0.5, "learning rate at batch 256, scaled linearly: lr * batch_size / 256")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 penalty, the usual value for CIFAR ResNets")
    # Plain SGD with momentum, not LARS: LARS pays off for batches of thousands (SimCLR's
    # 4096 on ImageNet); at the 32..512 of this course SGD with the linear scaling rule trains
    # as well and has one fewer moving part (lightly's CIFAR-10 benchmark does the same).
    warmup_epochs: float = option(
        2.0, "linear warm-up from lr/warmup_steps, then cosine decay to 0"
    )
    seed: int = option(0, "seeds the weights, the data order and the augmentations")
    device: str = option(
        "auto", '"auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...'
    )
    amp: str = option("bf16", 'autocast dtype on CUDA: "bf16", "fp16" (with loss scaling) or "off"')
    compile: bool = option(
        False, "torch.compile the model (CUDA, long runs; compilation takes minutes)"
    )
    channels_last: bool = option(
        False, "NHWC model and inputs on CUDA (faster fp16 convs); CPU: ignored"
    )
    norm: str = option("batch", '"batch" or "none" (no BatchNorm: exact multi-process equivalence)')
    feature_dim: int | None = option(
        None, "encoder width F; None: 128 (digits), 8 x width (ResNet-18)"
    )
    width: int | None = option(
        None, "ResNet-18 base channels (64 = standard); None: 64 or feature_dim/8"
    )
    proj_dim: int = option(128, "projection head output D, as in SimCLR and DCL")
    knn_k: int = option(200, "neighbours of the weighted kNN monitor (clamped to the memory bank)")
    knn_t: float = option(0.1, "temperature of the kNN vote weights")
    eval_every: int = option(1, "kNN every this many epochs (and always after the last)")
    eval_batch_size: int = option(1024, "images per forward pass when embedding for kNN")
    num_labels_per_class: int | None = option(
        None, "kNN memory bank: None = all labels, k = few-label"
    )
    out_dir: str | None = option(None, "folder for history and checkpoints; None writes nothing")
    checkpoint_every: int = option(
        0, "also checkpoint every this many steps (0: at epoch ends only)"
    )
    data_root: str | None = option(None, "dataset folder (see dcl_teach.data.data_dir)")
    download: bool = option(True, "download CIFAR-10 if it is missing")
    progress: bool = option(True, "tqdm progress bar (notebook-aware); off on ranks other than 0")
    max_steps: int | None = option(
        None, "stop after this many steps in all (checkpointed, resumable)"
    )

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named starting point from :data:`PRESETS`, with ``overrides`` on top.

        ``"digits"`` is the defaults; ``"cifar10"`` a lightly-style ResNet-18 setting (200
        epochs); ``"colab"`` a half-width ResNet-18 on CIFAR-10 sized for a free Colab T4
        (``docs/gpu.md``).

        Raises:
            ValueError: an unknown preset name, or overrides that TrainConfig rejects.

        Example:
            >>> c = TrainConfig.preset("colab", batch_size=128)
            >>> c.dataset, c.width, c.amp, c.channels_last, c.batch_size
            ('cifar10', 32, 'fp16', True, 128)
            >>> TrainConfig.preset("digits") == TrainConfig()
            True
        """
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """Defaults for ``dataset``: the preset of that name (``"digits"`` or ``"cifar10"``).

        Example:
            >>> TrainConfig.for_dataset("cifar10", batch_size=64).batch_size
            64
            >>> TrainConfig.for_dataset("cifar10") == TrainConfig.preset("cifar10")
            True
        """
        if dataset in ARCHITECTURES:
            return cls.preset(dataset, **overrides)
        return cls(dataset=dataset, **overrides)  # an unknown dataset: the usual clear error


# Named starting points of TrainConfig.preset: overrides of the TrainConfig defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: DCL on the bundled 8x8 digits, about 20 s on one CPU core.
    "digits": {},
    # A lightly-style ResNet-18 setting (lightly's CIFAR-10 benchmark: 200 epochs, SGD 0.06 per
    # 128 images, wd 5e-4) with 10 warm-up epochs. It is not the DCL paper's CIFAR-10 setting,
    # which this course has not checked against the paper.
    "cifar10": dict(dataset="cifar10", epochs=200, batch_size=256, lr=0.12, warmup_epochs=10.0),
    # CIFAR-10 on a free Colab T4 in at most 5 minutes a run: ResNet-18 at width 32 (a quarter
    # of its FLOPs), 10 epochs, kNN every 2 epochs, data on the GPU. fp16 autocast with loss
    # scaling, not bf16: a T4 (Turing) has fp16 tensor cores (65 TFLOPS) and no bf16 ones.
    # channels_last lets cuDNN use those tensor cores without transposing every activation.
    # Sized by an estimate (docs/gpu.md), not yet by a measurement on a T4.
    "colab": dict(
        dataset="cifar10",
        width=32,
        epochs=10,
        batch_size=256,
        lr=0.12,
        warmup_epochs=1.0,
        eval_every=2,
        device="cuda",
        amp="fp16",
        channels_last=True,
    ),
}


def _validate(c: TrainConfig) -> None:
    def choice(name: str, valid) -> None:
        if getattr(c, name) not in valid:
            raise ValueError(f"{name} must be one of {sorted(valid)}, got {getattr(c, name)!r}")

    choice("dataset", ARCHITECTURES)
    choice("loss", LOSSES)
    choice("amp", AMP_MODES)
    choice("norm", NORMS)
    for name in ("tau", "sigma", "lr", "knn_t"):
        value = getattr(c, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    for name in ("batch_size", "epochs", "proj_dim", "knn_k", "eval_every", "eval_batch_size"):
        value = getattr(c, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name in ("feature_dim", "width", "num_labels_per_class", "max_steps"):
        value = getattr(c, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
    if c.width is not None and ARCHITECTURES[c.dataset][0] != "resnet18":
        raise ValueError(
            f"width is the ResNet-18's base width (cifar10), got width={c.width} "
            f"for {c.dataset!r}: set feature_dim instead"
        )
    if c.width is not None and c.feature_dim is not None and c.feature_dim != 8 * c.width:
        raise ValueError(
            f"feature_dim is 8 x width for the ResNet-18: width {c.width} gives "
            f"{8 * c.width}, got feature_dim={c.feature_dim} (set only one)"
        )
    if c.batch_size < 2:
        raise ValueError(
            f"batch_size must be at least 2 (a negative per anchor), got {c.batch_size}"
        )
    if not 0 <= c.momentum < 1 or c.weight_decay < 0 or c.warmup_epochs < 0:
        raise ValueError(
            "need 0 <= momentum < 1, weight_decay >= 0 and warmup_epochs >= 0, got "
            f"{c.momentum}, {c.weight_decay}, {c.warmup_epochs}"
        )
    if c.device != "auto":
        try:
            torch.device(c.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {c.device!r}"
            ) from e
    if not isinstance(c.checkpoint_every, int) or c.checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be an integer >= 0, got {c.checkpoint_every!r}")
