"""The state of one training run: where it runs (:class:`Context`) and where it is (:class:`RunState`).

:class:`Context` holds what stays fixed during one call of :func:`dcl_teach.train.train` (the
config, the device, the data); :class:`RunState` everything a checkpoint must hold to resume
the run exactly (weights, optimizer, schedule, generators, position, running sums), with
:meth:`RunState.to_checkpoint` and :meth:`RunState.from_checkpoint`.

Taught in notebook 06.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import dcl_teach
from dcl_teach.augment import Recipe, recipe_for
from dcl_teach.checkpoint import CHECKPOINT_NAME
from dcl_teach.config import TrainConfig
from dcl_teach.data import ImageSet, load_dataset
from dcl_teach.evaluate import memory_bank_indices
from dcl_teach.models import build_model


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


def setup_distributed(config: TrainConfig) -> tuple[int, int, int, bool]:
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


@dataclass
class Context:
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


def setup_context(config: TrainConfig, *, rank: int, world: int, local_rank: int) -> Context:
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
    return Context(
        config,
        device,
        rank,
        world,
        train_set,
        test_set,
        bank,
        steps_per_epoch,
        recipe_for(config.dataset),
        call_start,
    )


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
    def new(cls, ctx: Context) -> RunState:
        """A fresh run: seeded weights, SGD with the warm-up + cosine schedule, seeded generators."""
        config, device = ctx.config, ctx.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(
                config.dataset,
                feature_dim=config.feature_dim,
                proj_dim=config.proj_dim,
                norm=config.norm,
                width=config.width,
            ).to(device)
        if config.channels_last and device.type == "cuda":  # NHWC: faster tensor-core convs
            model = model.to(memory_format=torch.channels_last)
        if ctx.world > 1 and device.type == "cuda":
            # One BatchNorm over the global batch, as a single GPU would compute it.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr * ctx.batch / 256,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
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
    def from_checkpoint(cls, ctx: Context, state: dict[str, Any]) -> RunState:
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
            "config": dataclasses.asdict(config),
            "version": dcl_teach.__version__,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "order_generator": self.order_gen.get_state(),
            "aug_generator": self.aug_gen.get_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "elapsed": self.wall_time(),
            "perm": self.perm,
            "acc": {
                "loss": self.loss_sum.cpu(),
                "q_b": self.q_sum.cpu(),
                "seconds": self.epoch_time(),
            },
            "records": list(self.records),
        }

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
