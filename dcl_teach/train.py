"""Train an encoder with InfoNCE, DCL or DCLW: one config, one function, resumable, multi-GPU.

``train(TrainConfig(...))`` loads the dataset once as uint8 tensors on the device, draws two
augmented views of every batch with a seeded generator, minimises the chosen loss, and once per
epoch measures the weighted-kNN accuracy of the frozen features, the mean loss and the mean
coupling factor q_B. With ``out_dir`` it writes ``history.json``/``history.csv`` and an atomic,
checksummed checkpoint that a killed run resumes from without losing a step. Under ``torchrun``
it shards each batch over the ranks with DistributedDataParallel and gathers the negatives.

Everything random (data order, augmentation, initial weights) comes from the seed, so a CPU run
is reproducible to the bit and a resumed run equals an uninterrupted one (``tests/test_train.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import dcl_teach
from dcl_teach.augment import Recipe, recipe_for, two_views
from dcl_teach.data import ImageSet, load_dataset
from dcl_teach.distributed import gather_no_grad
from dcl_teach.evaluate import embed, knn_accuracy, memory_bank_indices
from dcl_teach.grads import coupling
from dcl_teach.losses import LOSSES
from dcl_teach.models import ARCHITECTURES, NORMS, build_model

AMP_MODES = ("bf16", "fp16", "off")

# Fields that do not change what a run computes: a checkpoint written with other values of
# these may be resumed (e.g. a longer max_steps, progress bars on, another data folder).
RESUME_FREE_FIELDS = (
    "device", "compile", "channels_last", "eval_batch_size", "out_dir", "checkpoint_every",
    "data_root", "download", "progress", "max_steps",
)  # fmt: skip
TIMING_KEYS = ("images_per_s", "epoch_time_s", "wall_time_s")  # differ between identical runs
CHECKPOINT_NAME = "checkpoint.pt"
_MAGIC = b"DCLTEACH-CKPT-1\n"  # file = magic, sha256 hex digest of the payload, newline, payload


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

    dataset: str = "digits"  # "digits" (bundled 8x8, CPU-friendly) or "cifar10" (download)
    loss: str = "dcl"  # "infonce" (SimCLR), "dcl" or "dclw"
    tau: float = 0.1  # temperature; 0.1 for all three losses, as in the DCL implementations
    sigma: float = 0.5  # DCLW weighting width (ignored by the other losses)
    batch_size: int = 128  # images per step over all ranks (2x as many views)
    epochs: int = 50  # passes over the training split (digits: about 20 s on one CPU core)
    lr: float = 0.5  # learning rate at batch 256, scaled linearly: lr * batch_size / 256
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 5e-4  # L2 penalty, the usual value for CIFAR ResNets
    # Plain SGD with momentum, not LARS: LARS pays off for batches of thousands (SimCLR's
    # 4096 on ImageNet); at the 32..512 of this course SGD with the linear scaling rule trains
    # as well and has one fewer moving part (lightly's CIFAR-10 benchmark does the same).
    warmup_epochs: float = 2.0  # linear warm-up from lr/warmup_steps, then cosine decay to 0
    seed: int = 0  # seeds the weights, the data order and the augmentations
    device: str = "auto"  # "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    amp: str = "bf16"  # autocast dtype on CUDA: "bf16", "fp16" (with loss scaling) or "off"
    compile: bool = False  # torch.compile the model (CUDA, long runs; compilation takes minutes)
    channels_last: bool = False  # NHWC model and inputs on CUDA (faster fp16 convs); CPU: ignored
    norm: str = "batch"  # "batch" or "none" (no BatchNorm: exact multi-process equivalence)
    feature_dim: int | None = None  # encoder width F; None: 128 (digits), 8 x width (ResNet-18)
    width: int | None = None  # ResNet-18 base channels (64 = standard); None: 64 or feature_dim/8
    proj_dim: int = 128  # projection head output D, as in SimCLR and DCL
    knn_k: int = 200  # neighbours of the weighted kNN monitor (clamped to the memory bank)
    knn_t: float = 0.1  # temperature of the kNN vote weights
    eval_every: int = 1  # kNN every this many epochs (and always after the last)
    eval_batch_size: int = 1024  # images per forward pass when embedding for kNN
    num_labels_per_class: int | None = None  # kNN memory bank: None = all labels, k = few-label
    out_dir: str | None = None  # folder for history and checkpoints; None writes nothing
    checkpoint_every: int = 0  # also checkpoint every this many steps (0: at epoch ends only)
    data_root: str | None = None  # dataset folder (see dcl_teach.data.data_dir)
    download: bool = True  # download CIFAR-10 if it is missing
    progress: bool = True  # tqdm progress bar (notebook-aware); off on ranks other than 0
    max_steps: int | None = None  # stop after this many steps in all (checkpointed, resumable)

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
    "cifar10": {"dataset": "cifar10", "epochs": 200, "batch_size": 256, "lr": 0.12,
                "warmup_epochs": 10.0},
    # CIFAR-10 on a free Colab T4 in at most 5 minutes a run: ResNet-18 at width 32 (a quarter
    # of its FLOPs), 10 epochs, kNN every 2 epochs, data on the GPU. fp16 autocast with loss
    # scaling, not bf16: a T4 (Turing) has fp16 tensor cores (65 TFLOPS) and no bf16 ones.
    # channels_last lets cuDNN use those tensor cores without transposing every activation.
    # Sized by an estimate (docs/gpu.md), not yet by a measurement on a T4.
    "colab": {"dataset": "cifar10", "width": 32, "epochs": 10, "batch_size": 256, "lr": 0.12,
              "warmup_epochs": 1.0, "eval_every": 2, "device": "cuda", "amp": "fp16",
              "channels_last": True},
}  # fmt: skip


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
        raise ValueError(f"width is the ResNet-18's base width (cifar10), got width={c.width} "
                         f"for {c.dataset!r}: set feature_dim instead")  # fmt: skip
    if c.width is not None and c.feature_dim is not None and c.feature_dim != 8 * c.width:
        raise ValueError(f"feature_dim is 8 x width for the ResNet-18: width {c.width} gives "
                         f"{8 * c.width}, got feature_dim={c.feature_dim} (set only one)")  # fmt: skip
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


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up to 1, then half a cosine down to 0.

    Args:
        step: optimizer steps already taken (0 for the first step).
        warmup_steps: steps of linear warm-up (0 for none).
        total_steps: steps of the whole run.

    Returns:
        The factor in (0, 1] applied to the base learning rate.

    Example:
        >>> [round(lr_factor(s, warmup_steps=2, total_steps=6), 3) for s in range(6)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]

    Taught in notebook 06.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # in [0, 1)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class History:
    """What a run returns and writes: one record per epoch plus its provenance.

    Attributes:
        records: one dict per epoch: ``epoch``, ``step``, ``loss``, ``q_b``, ``knn_acc`` (None
            when not evaluated), ``lr``, ``images_per_s``, ``epoch_time_s``, ``wall_time_s``,
            ``complete`` (False for a last epoch cut short by ``max_steps``).
        config: the :class:`TrainConfig` as a dict.
        meta: package and torch version, device, world size, total wall time, ...
        model: the trained :class:`~dcl_teach.models.ContrastiveModel` (in memory only; not
            written by :meth:`save`, the checkpoint holds its weights).

    Taught in notebook 06.
    """

    records: list[dict[str, Any]]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    model: torch.nn.Module | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with ``config``, ``meta`` and ``records``."""
        return {"config": dict(self.config), "meta": dict(self.meta), "records": list(self.records)}

    @property
    def final_knn(self) -> float | None:
        """kNN accuracy after the last evaluated epoch (None if none was evaluated)."""
        accs = [r["knn_acc"] for r in self.records if r["knn_acc"] is not None]
        return accs[-1] if accs else None

    def column(self, key: str) -> list[Any]:
        """One field of every record, e.g. ``history.column("knn_acc")``."""
        return [r[key] for r in self.records]

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``history.json`` and ``history.csv`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2)
        _atomic_write(out / "history.json", text.encode())
        buffer = io.StringIO()
        keys = list(self.records[0]) if self.records else ["epoch"]
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        _atomic_write(out / "history.csv", buffer.getvalue().encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a ``history.json`` (or the folder holding it)."""
        path = Path(path)
        data = json.loads((path / "history.json" if path.is_dir() else path).read_text())
        return cls(records=data["records"], config=data["config"], meta=data["meta"])


# ---------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another configuration."""


def _atomic_write(path: Path, payload: bytes) -> None:
    # A crash leaves either the old file or the new one, never half of one: write a temporary
    # file in the same folder, flush it to disk, then rename over the target (atomic on POSIX).
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically, with a sha256 checksum that :func:`load_checkpoint` verifies.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "c.pt"
        >>> save_checkpoint(p, {"step": 3})
        >>> load_checkpoint(p)["step"]
        3

    Taught in notebook 06.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    _atomic_write(Path(path), _MAGIC + digest + b"\n" + payload)


def load_checkpoint(path: str | os.PathLike, config: TrainConfig | None = None) -> dict[str, Any]:
    """Read and verify a checkpoint; with ``config``, check it was written by the same run.

    Args:
        path: file written by :func:`save_checkpoint`.
        config: when given, every field outside ``RESUME_FREE_FIELDS`` must match.

    Returns:
        The saved state dict (tensors on the CPU).

    Raises:
        CheckpointError: the file is truncated, corrupt or not a checkpoint, or its config
            differs (the message lists the fields that differ).

    Taught in notebook 06.
    """
    path = Path(path)
    blob = path.read_bytes()
    head, _, payload = blob[len(_MAGIC) :].partition(b"\n")
    if not blob.startswith(_MAGIC) or hashlib.sha256(payload).hexdigest().encode() != head:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated (checksum mismatch); delete it to start "
            "over, or pass resume=False"
        )
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # a verified payload that still fails is a format problem
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e
    if config is not None:
        saved, now = state["config"], dataclasses.asdict(config)
        diff = [
            f"{k}: {saved.get(k)!r} in the checkpoint, {now[k]!r} now"
            for k in now
            if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k]
        ]
        if diff:
            raise CheckpointError(
                f"checkpoint {path} was written by a different configuration ({'; '.join(diff)}); "
                "use the same settings, another out_dir, or resume=False"
            )
    return state


# ---------------------------------------------------------------------------- the loop


def resolve_device(device: str, *, local_rank: int = 0) -> torch.device:
    """The torch device for a config's ``device`` string (``"auto"``: CUDA if available).

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')

    Taught in notebook 06.
    """
    if device == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    try:
        d = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was requested but CUDA is not available here")
    if d.type == "cuda" and d.index is None:
        d = torch.device("cuda", local_rank)
    return d


def _setup_distributed(config: TrainConfig) -> tuple[int, int, int, bool]:
    """(rank, world size, local rank, whether this call initialised the process group)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank, False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 0, False
    use_cuda = torch.cuda.is_available() and config.device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo")  # reads MASTER_ADDR, RANK, ...
    return dist.get_rank(), dist.get_world_size(), local_rank, True


def train(
    config: TrainConfig,
    *,
    resume: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> History:
    """Train an encoder contrastively and monitor it with weighted kNN, as ``config`` says.

    Each step takes the next ``batch_size`` images of a seeded permutation, draws two views
    with :func:`dcl_teach.augment.two_views`, embeds them, and takes an SGD step on the loss
    ``LOSSES[config.loss]``. The mean q_B of the batch (:func:`dcl_teach.grads.coupling`) is
    logged beside the loss. Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is set
    up from the environment, each rank embeds its shard of the batch, and the loss gathers
    the negatives of all ranks.

    Args:
        config: the run.
        resume: continue from ``out_dir/checkpoint.pt`` if it exists (its config must match).
        callback: called after every step (and its checkpoint) with a dict holding
            ``epoch``, ``step_in_epoch``, ``global_step`` and ``loss``.

    Returns:
        The :class:`History` (also written to ``out_dir`` on rank 0).

    Raises:
        ValueError: a batch larger than the training set, or not divisible by the world size.
        CheckpointError: a corrupt checkpoint, or one written by another configuration.

    Example:
        >>> cfg = TrainConfig(epochs=1, max_steps=2, progress=False, knn_k=20)
        >>> h = train(cfg)
        >>> h.records[-1]["step"], h.records[-1]["complete"], 0 < h.final_knn <= 1
        (2, False, True)

    Taught in notebook 06.
    """
    rank, world, local_rank, owns_group = _setup_distributed(config)
    try:
        return _train(config, resume, callback, rank=rank, world=world, local_rank=local_rank)
    finally:
        if owns_group:
            dist.destroy_process_group()


@dataclass
class _Context:
    """What stays fixed during one call of :func:`train`: the config, where it runs, the data."""

    config: TrainConfig
    device: torch.device
    rank: int
    world: int
    train_set: ImageSet  # uint8 on the device
    test_set: ImageSet
    bank: torch.Tensor  # (M,) training images whose labels the kNN monitor may use
    steps_per_epoch: int
    recipe: Recipe  # the augmentations of the dataset
    call_start: float  # time.perf_counter() when this call started

    @property
    def batch(self) -> int:
        return self.config.batch_size

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs

    @property
    def use_amp(self) -> bool:
        return self.device.type == "cuda" and self.config.amp != "off"

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.config.out_dir) / CHECKPOINT_NAME if self.config.out_dir else None

    def autocast(self):
        dtype = torch.float16 if self.config.amp == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.use_amp)

    def stop_at(self, global_step: int) -> bool:
        """Whether ``max_steps`` is reached after ``global_step`` steps."""
        return self.config.max_steps is not None and global_step >= self.config.max_steps

    def loss_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"tau": self.config.tau, "gather_distributed": self.world > 1}
        if self.config.loss == "dclw":
            kwargs["sigma"] = self.config.sigma
        return kwargs


def _setup(config: TrainConfig, *, rank: int, world: int, local_rank: int) -> _Context:
    """Check the batch, pick the device and load both splits onto it (rank 0 downloads first)."""
    call_start = time.perf_counter()
    device = resolve_device(config.device, local_rank=local_rank)
    batch = config.batch_size
    if batch % world:
        raise ValueError(f"batch_size {batch} must be divisible by the world size {world}")
    if world > 1 and rank != 0:
        dist.barrier()  # rank 0 downloads first
    load = dict(root=config.data_root, device=device, download=config.download)
    train_set = load_dataset(config.dataset, split="train", **load)
    test_set = load_dataset(config.dataset, split="test", **load)
    if world > 1 and rank == 0:
        dist.barrier()
    n = len(train_set)
    steps_per_epoch = n // batch  # the last incomplete batch is dropped: q_B depends on B
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {batch} exceeds the {n} training images of {config.dataset}")
    bank = memory_bank_indices(train_set.labels, config.num_labels_per_class, seed=config.seed)
    return _Context(config, device, rank, world, train_set, test_set, bank, steps_per_epoch,
                    recipe_for(config.dataset), call_start)  # fmt: skip


@dataclass
class RunState:
    """Everything a checkpoint holds: model, optimizer, schedule, scaler, generators, position.

    ``model`` is the bare model (not wrapped by DDP or ``torch.compile``). The running sums
    ``loss_sum`` and ``q_sum`` live on the device during an epoch. Times are split into what
    earlier calls spent (``elapsed``, ``epoch_seconds``, saved) and this call's start marks
    (``call_start``, ``epoch_start``, not saved), so a resumed run reports its whole wall time.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    order_gen: torch.Generator  # data order (CPU)
    aug_gen: torch.Generator  # augmentations (CPU draws, moved to the device: any device alike)
    call_start: float
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps taken in the current epoch
    global_step: int = 0
    elapsed: float = 0.0  # seconds spent by earlier calls (resumed runs)
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # () this epoch
    q_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # ()
    epoch_seconds: float = 0.0  # seconds of the current epoch spent by earlier calls
    epoch_start: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def new(cls, ctx: _Context) -> RunState:
        """A fresh run: seeded weights, SGD with the warm-up + cosine schedule, seeded generators."""
        config, device = ctx.config, ctx.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(
                config.dataset, feature_dim=config.feature_dim, proj_dim=config.proj_dim,
                norm=config.norm, width=config.width,
            ).to(device)  # fmt: skip
        if config.channels_last and device.type == "cuda":  # NHWC: faster tensor-core convs
            model = model.to(memory_format=torch.channels_last)
        if ctx.world > 1 and device.type == "cuda":
            # One BatchNorm over the global batch, as a single GPU would compute it.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr * ctx.batch / 256, momentum=config.momentum,
            weight_decay=config.weight_decay,
        )  # fmt: skip
        warmup_steps = round(config.warmup_epochs * ctx.steps_per_epoch)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda s: lr_factor(s, warmup_steps=warmup_steps, total_steps=ctx.total_steps),
        )
        scaler = torch.amp.GradScaler("cuda", enabled=ctx.use_amp and config.amp == "fp16")
        order_gen = torch.Generator().manual_seed(config.seed)
        aug_gen = torch.Generator().manual_seed(config.seed + 1)
        return cls(model, optimizer, schedule, scaler, order_gen, aug_gen, ctx.call_start)

    @classmethod
    def from_checkpoint(cls, ctx: _Context, state: dict[str, Any]) -> RunState:
        """The run a checkpoint written by :meth:`to_checkpoint` describes."""
        run = cls.new(ctx)
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.schedule.load_state_dict(state["schedule"])
        run.scaler.load_state_dict(state["scaler"])
        run.order_gen.set_state(state["order_generator"])
        run.aug_gen.set_state(state["aug_generator"])
        run.epoch, run.step_in_epoch = state["epoch"], state["step_in_epoch"]
        run.global_step, run.elapsed = state["global_step"], state["elapsed"]
        run.perm, run.records = state["perm"], state["records"]
        acc = state["acc"]
        run.loss_sum, run.q_sum, run.epoch_seconds = acc["loss"], acc["q_b"], acc["seconds"]
        return run

    def to_checkpoint(self, config: TrainConfig) -> dict[str, Any]:
        """The state dict :func:`save_checkpoint` writes (tensors moved to the CPU)."""
        return {
            "config": dataclasses.asdict(config), "version": dcl_teach.__version__,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "order_generator": self.order_gen.get_state(),
            "aug_generator": self.aug_gen.get_state(),
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "elapsed": self.wall_time(), "perm": self.perm,
            "acc": {"loss": self.loss_sum.cpu(), "q_b": self.q_sum.cpu(),
                    "seconds": self.epoch_time()},
            "records": list(self.records),
        }  # fmt: skip

    def wall_time(self) -> float:
        """Seconds of the whole run so far, earlier calls included."""
        return self.elapsed + time.perf_counter() - self.call_start

    def epoch_time(self) -> float:
        """Seconds of the current epoch so far, earlier calls included."""
        return self.epoch_seconds + time.perf_counter() - self.epoch_start

    def begin_epoch(self, n: int, device: torch.device) -> None:
        """Draw the epoch's data order (unless resuming mid-epoch) and start its clock."""
        if self.step_in_epoch == 0:
            self.perm = torch.randperm(n, generator=self.order_gen)  # (n,) this epoch's order
            self.loss_sum, self.q_sum, self.epoch_seconds = torch.zeros(()), torch.zeros(()), 0.0
        self.epoch_start = time.perf_counter()
        self.loss_sum, self.q_sum = self.loss_sum.to(device), self.q_sum.to(device)

    def end_epoch(self, device: torch.device) -> None:
        """Move on to the next epoch: zero the running sums and the epoch clock."""
        self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self.loss_sum = torch.zeros((), device=device)
        self.q_sum = torch.zeros((), device=device)
        self.epoch_start, self.epoch_seconds = time.perf_counter(), 0.0


def _train(config, resume, callback, *, rank, world, local_rank) -> History:
    ctx = _setup(config, rank=rank, world=world, local_rank=local_rank)
    ckpt = ctx.checkpoint_path
    resumed_from = None
    if resume and ckpt is not None and ckpt.exists():
        run = RunState.from_checkpoint(ctx, load_checkpoint(ckpt, config))
        resumed_from = run.global_step
    else:
        run = RunState.new(ctx)
    step_model = _step_model(ctx, run.model)
    bar = tqdm(
        total=min(ctx.total_steps, config.max_steps or ctx.total_steps),
        initial=run.global_step, disable=not (config.progress and rank == 0),
        desc=f"{config.loss} B={ctx.batch}", unit="step", dynamic_ncols=True,
    )  # fmt: skip
    records = _train_epochs(ctx, run, step_model, bar, callback)
    bar.close()
    history = _history(config, records, ctx.device, world, run.call_start, run.elapsed)
    history.meta.update(steps_per_epoch=ctx.steps_per_epoch, global_step=run.global_step,
                        resumed_from_step=resumed_from)  # fmt: skip
    history.model = run.model.eval()
    if config.out_dir and rank == 0:
        history.save(config.out_dir)
    return history


def _step_model(ctx: _Context, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model the training steps call: wrapped by DDP over ranks, compiled if asked."""
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if ctx.config.compile else model


def _train_epochs(ctx: _Context, run: RunState, step_model, bar, callback) -> list[dict]:
    """Train until the last epoch or ``max_steps``; return the records to report.

    A run stopped by ``max_steps`` in the middle of an epoch reports that epoch as a record
    with ``complete=False`` (evaluated), which is not kept in the checkpoint.
    """
    config = ctx.config
    stop = ctx.stop_at(run.global_step)
    run.model.train()
    while run.epoch < config.epochs and not stop:
        info, loss, stop = _run_epoch(ctx, run, step_model, bar, callback)
        if run.step_in_epoch < ctx.steps_per_epoch:  # cut short by max_steps: report, not keep
            epoch_time = run.epoch_time()
            return [*run.records, _record(ctx, run, run.step_in_epoch, False, epoch_time, True)]
        last = run.epoch + 1 == config.epochs
        do_eval = last or (run.epoch + 1) % config.eval_every == 0
        run.records.append(_record(ctx, run, ctx.steps_per_epoch, True, run.epoch_time(), do_eval))
        run.end_epoch(ctx.device)
        _checkpoint(ctx, run)
        if config.out_dir and ctx.rank == 0:
            _history(config, run.records, ctx.device, ctx.world, run.call_start,
                     run.elapsed).save(config.out_dir)  # fmt: skip
        if callback is not None:
            callback({**info, "loss": loss.item()})
    return run.records


def _run_epoch(ctx: _Context, run: RunState, step_model, bar, callback):
    """Take the steps left in the current epoch (fewer if ``max_steps`` is reached).

    Checkpoints every ``checkpoint_every`` steps and when ``max_steps`` stops the run, then
    calls ``callback``; the epoch's last step leaves both to :func:`_train_epochs`.

    Returns:
        ``(info, loss, stop)``: the last step's position, its loss tensor, whether to stop.
    """
    config, batch = ctx.config, ctx.batch
    run.begin_epoch(len(ctx.train_set), ctx.device)
    order = run.perm.to(ctx.device)
    info, loss, stop = {}, None, False
    for s in range(run.step_in_epoch, ctx.steps_per_epoch):
        images = ctx.train_set.images[order[s * batch : (s + 1) * batch]]  # (B, C, H, W) uint8
        loss = _train_step(ctx, run, step_model, images)
        run.global_step, run.step_in_epoch = run.global_step + 1, s + 1
        stop = ctx.stop_at(run.global_step)
        bar.update(1)
        if config.progress and ctx.rank == 0 and run.global_step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", epoch=run.epoch + 1)
        info = {"epoch": run.epoch, "step_in_epoch": run.step_in_epoch,
                "global_step": run.global_step}  # fmt: skip
        if run.step_in_epoch < ctx.steps_per_epoch:  # the epoch's last step is handled later
            every = config.checkpoint_every
            if stop or (every and run.global_step % every == 0):
                _checkpoint(ctx, run)
            if callback is not None:
                callback({**info, "loss": loss.item()})
        if stop:
            break
    return info, loss, stop


def _train_step(ctx: _Context, run: RunState, step_model, images: torch.Tensor) -> torch.Tensor:
    """One SGD step on two views of ``images``; adds the loss and mean q_B to the epoch sums."""
    config = ctx.config
    shard = slice(ctx.rank * ctx.batch // ctx.world, (ctx.rank + 1) * ctx.batch // ctx.world)
    v1, v2 = two_views(images, ctx.recipe, generator=run.aug_gen)  # (B, C, H, W)
    x = torch.cat([v1[shard], v2[shard]])  # (2B/W, C, H, W) this rank's share
    if config.channels_last and ctx.device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)  # same values, NHWC strides
    with ctx.autocast():
        z = step_model(x)  # (2B/W, D)
    z1, z2 = z.float().chunk(2)  # (B/W, D) each
    loss = LOSSES[config.loss](z1, z2, **ctx.loss_kwargs())  # mean over the global 2B anchors
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.schedule.step()
    with torch.no_grad():
        q = coupling(gather_no_grad(z1), gather_no_grad(z2), tau=config.tau)  # (2B,)
    run.loss_sum += loss.detach()
    run.q_sum += q.mean()
    return loss


def _checkpoint(ctx: _Context, run: RunState) -> None:
    """Save the run on rank 0 (if there is an ``out_dir``); all ranks wait for it."""
    ckpt = ctx.checkpoint_path
    if ckpt is not None and ctx.rank == 0:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, run.to_checkpoint(ctx.config))
    if ctx.world > 1:
        dist.barrier()


def _record(ctx: _Context, run: RunState, steps: int, complete: bool, epoch_time: float,
            do_eval: bool) -> dict[str, Any]:  # fmt: skip
    """The history record of the current epoch after ``steps`` of its steps."""
    return {
        "epoch": run.epoch + 1, "step": run.global_step, "complete": complete,
        "loss": (run.loss_sum / steps).item(), "q_b": (run.q_sum / steps).item(),
        "knn_acc": _evaluate(ctx, run.model) if do_eval else None,
        "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_s": steps * ctx.batch / epoch_time, "epoch_time_s": epoch_time,
        "wall_time_s": run.wall_time(),
    }  # fmt: skip


def _evaluate(ctx: _Context, model: torch.nn.Module) -> float:
    """Weighted-kNN accuracy of the frozen features on the test split (computed on rank 0)."""
    config, train_set, test_set = ctx.config, ctx.train_set, ctx.test_set
    acc = [None]
    if ctx.rank == 0:
        with ctx.autocast():
            h_bank = embed(model, train_set.images[ctx.bank], name=config.dataset,
                           batch_size=config.eval_batch_size, device=ctx.device)  # fmt: skip
            h_test = embed(model, test_set.images, name=config.dataset,
                           batch_size=config.eval_batch_size, device=ctx.device)  # fmt: skip
        acc[0] = knn_accuracy(
            h_bank, train_set.labels[ctx.bank], h_test, test_set.labels,
            num_classes=len(train_set.classes), k=config.knn_k, t=config.knn_t,
        )  # fmt: skip
    if ctx.world > 1:  # BatchNorm buffers differ across ranks: rank 0's number is the number
        dist.broadcast_object_list(acc, src=0)
    return acc[0]


def _history(config, records, device, world, call_start, elapsed) -> History:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    meta = {
        "dcl_teach_version": dcl_teach.__version__, "torch_version": torch.__version__,
        "device": str(device), "device_name": name, "world_size": world,
        "wall_time_s": elapsed + time.perf_counter() - call_start,
    }  # fmt: skip
    return History(records=list(records), config=dataclasses.asdict(config), meta=meta)


# ---------------------------------------------------------------------------- comparisons


def run_grid(
    base: TrainConfig,
    *,
    losses: Sequence[str] = ("infonce", "dcl", "dclw"),
    batch_sizes: Sequence[int] = (32, 256),
    out_dir: str | os.PathLike | None = None,
    resume: bool = True,
) -> list[History]:
    """Train every (batch size, loss) pair of the grid from the same base configuration.

    Args:
        base: the shared settings (its ``loss``, ``batch_size`` and ``out_dir`` are replaced).
        losses: names from ``LOSSES``.
        batch_sizes: batch sizes to try.
        out_dir: each run writes to ``out_dir/<loss>_bs<batch>`` (None: nothing is written).
        resume: resume runs whose checkpoints exist.

    Returns:
        One :class:`History` per run, batch size major, in the order given.

    Raises:
        ValueError: an empty grid or a bad loss/batch size (before anything trains).

    Taught in notebook 06.
    """
    if not losses or not batch_sizes:
        raise ValueError(f"need at least one loss and one batch size, got {losses}, {batch_sizes}")
    configs = [
        dataclasses.replace(
            base,
            loss=loss,
            batch_size=bs,
            out_dir=None if out_dir is None else str(Path(out_dir) / f"{loss}_bs{bs}"),
        )  # fmt: skip
        for bs in batch_sizes
        for loss in losses
    ]  # every config is validated here, before the first run starts
    return [train(c, resume=resume) for c in configs]


def summarize(histories: Sequence[History]) -> list[dict[str, Any]]:
    """One row per run: loss, batch size, final and best kNN accuracy, final q_B, wall time.

    Taught in notebook 06.
    """
    rows = []
    for h in histories:
        accs = [a for a in h.column("knn_acc") if a is not None]
        rows.append({
            "loss": h.config["loss"], "batch_size": h.config["batch_size"],
            "epochs": len(h.records), "knn_acc": h.final_knn,
            "best_knn_acc": max(accs) if accs else None,
            "q_b": h.records[-1]["q_b"] if h.records else None,
            "train_loss": h.records[-1]["loss"] if h.records else None,
            "wall_time_s": h.meta.get("wall_time_s"),
        })  # fmt: skip
    return rows


def plot_comparison(histories: Sequence[History]):
    """Figure: final kNN accuracy vs batch size per loss, and kNN and q_B curves per epoch.

    Returns:
        A ``matplotlib.figure.Figure`` with three axes (no pyplot state is touched).

    Taught in notebook 06.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_bs, ax_acc, ax_q = fig.subplots(1, 3)
    losses = list(dict.fromkeys(h.config["loss"] for h in histories))
    sizes = sorted({h.config["batch_size"] for h in histories})
    colors = {loss: f"C{i}" for i, loss in enumerate(losses)}
    styles = {bs: ("-", "--", ":", "-.")[i % 4] for i, bs in enumerate(sizes)}
    label = {"infonce": "InfoNCE (SimCLR)", "dcl": "DCL", "dclw": "DCLW"}
    for loss in losses:
        runs = sorted((h for h in histories if h.config["loss"] == loss),
                      key=lambda h: h.config["batch_size"])  # fmt: skip
        xs = [h.config["batch_size"] for h in runs]
        ys = [100 * (h.final_knn or float("nan")) for h in runs]
        ax_bs.plot(xs, ys, "o-", color=colors[loss], label=label.get(loss, loss))
    for h in histories:
        loss, bs = h.config["loss"], h.config["batch_size"]
        ev = [r for r in h.records if r["knn_acc"] is not None]
        kw = dict(
            color=colors[loss], linestyle=styles[bs], label=f"{label.get(loss, loss)}, B={bs}"
        )
        ax_acc.plot([r["epoch"] for r in ev], [100 * r["knn_acc"] for r in ev], **kw)
        ax_q.plot(h.column("epoch"), h.column("q_b"), **kw)
    ax_bs.set(xscale="log", xlabel="batch size", ylabel="final kNN accuracy (%)",
              title="accuracy vs batch size")  # fmt: skip
    ax_bs.set_xticks(sizes, [str(s) for s in sizes])
    ax_bs.minorticks_off()
    ax_acc.set(xlabel="epoch", ylabel="kNN accuracy (%)", title="kNN accuracy per epoch")
    ax_q.set(xlabel="epoch", ylabel="mean $q_B$", title="coupling factor $q_B$ per epoch")
    ax_bs.legend(fontsize=8)
    ax_q.legend(fontsize=7)
    for ax in (ax_bs, ax_acc, ax_q):
        ax.grid(alpha=0.3)
    return fig
