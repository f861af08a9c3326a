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
from dcl_teach.augment import recipe_for, two_views
from dcl_teach.data import load_dataset
from dcl_teach.distributed import gather_no_grad
from dcl_teach.evaluate import embed, knn_accuracy, memory_bank_indices
from dcl_teach.grads import coupling
from dcl_teach.losses import LOSSES
from dcl_teach.models import ARCHITECTURES, NORMS, build_model

AMP_MODES = ("bf16", "fp16", "off")

# Fields that do not change what a run computes: a checkpoint written with other values of
# these may be resumed (e.g. a longer max_steps, progress bars on, another data folder).
RESUME_FREE_FIELDS = (
    "device", "compile", "eval_batch_size", "out_dir", "checkpoint_every", "data_root",
    "download", "progress", "max_steps",
)  # fmt: skip
TIMING_KEYS = ("images_per_s", "epoch_time_s", "wall_time_s")  # differ between identical runs
CHECKPOINT_NAME = "checkpoint.pt"
_MAGIC = b"DCLTEACH-CKPT-1\n"  # file = magic, sha256 hex digest of the payload, newline, payload


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults: DCL on digits, about 20 s on one CPU core.

    Use :meth:`for_dataset` for CIFAR-10's defaults and ``dataclasses.replace`` for variants.

    Example:
        >>> TrainConfig().loss, TrainConfig.for_dataset("cifar10").epochs
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
    norm: str = "batch"  # "batch" or "none" (no BatchNorm: exact multi-process equivalence)
    feature_dim: int | None = None  # encoder width F; None: 128 (digits), 512 (ResNet-18)
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
    def for_dataset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """Defaults for ``dataset``: CIFAR-10 gets the paper-style 200-epoch ResNet-18 run.

        Example:
            >>> TrainConfig.for_dataset("cifar10", batch_size=64).batch_size
            64
        """
        preset = {"dataset": dataset}
        if dataset == "cifar10":
            # lightly's benchmark: 200 epochs, SGD 0.06 per 128 images, wd 5e-4; 10 warm-up epochs.
            preset.update(epochs=200, batch_size=256, lr=0.12, warmup_epochs=10.0)
        return cls(**{**preset, **overrides})


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
    for name in ("feature_dim", "num_labels_per_class", "max_steps"):
        value = getattr(c, name)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
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


def _train(config, resume, callback, *, rank, world, local_rank) -> History:
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
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    bank = memory_bank_indices(train_set.labels, config.num_labels_per_class, seed=config.seed)
    recipe = recipe_for(config.dataset)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = build_model(
            config.dataset, feature_dim=config.feature_dim, proj_dim=config.proj_dim,
            norm=config.norm,
        ).to(device)  # fmt: skip
    if world > 1 and device.type == "cuda":
        # One BatchNorm over the global batch, as a single GPU would compute it.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr * batch / 256, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )  # fmt: skip
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps=warmup_steps, total_steps=total_steps)
    )
    use_amp = device.type == "cuda" and config.amp != "off"
    amp_dtype = torch.float16 if config.amp == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and config.amp == "fp16")
    order_gen = torch.Generator().manual_seed(config.seed)  # data order (CPU)
    # Augmentations draw on the CPU and move to the device: the same views on any device.
    aug_gen = torch.Generator().manual_seed(config.seed + 1)

    epoch, step_in_epoch, global_step, elapsed = 0, 0, 0, 0.0
    records: list[dict[str, Any]] = []
    perm = torch.empty(0, dtype=torch.int64)
    acc = {"loss": torch.zeros(()), "q_b": torch.zeros(()), "seconds": 0.0}
    ckpt = Path(config.out_dir) / CHECKPOINT_NAME if config.out_dir else None
    resumed_from = None
    if resume and ckpt is not None and ckpt.exists():
        state = load_checkpoint(ckpt, config)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        order_gen.set_state(state["order_generator"])
        aug_gen.set_state(state["aug_generator"])
        epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
        global_step, elapsed, resumed_from = (
            state["global_step"],
            state["elapsed"],
            state["global_step"],
        )
        perm, acc, records = state["perm"], state["acc"], state["records"]

    raw_model = model
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    step_model = torch.compile(model) if config.compile else model
    loss_fn = LOSSES[config.loss]
    loss_kwargs: dict[str, Any] = {"tau": config.tau, "gather_distributed": world > 1}
    if config.loss == "dclw":
        loss_kwargs["sigma"] = config.sigma
    shard = slice(rank * batch // world, (rank + 1) * batch // world)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp)

    def evaluate() -> float:
        acc_ = [None]
        if rank == 0:
            with autocast():
                h_bank = embed(raw_model, train_set.images[bank], name=config.dataset,
                               batch_size=config.eval_batch_size, device=device)  # fmt: skip
                h_test = embed(raw_model, test_set.images, name=config.dataset,
                               batch_size=config.eval_batch_size, device=device)  # fmt: skip
            acc_[0] = knn_accuracy(
                h_bank, train_set.labels[bank], h_test, test_set.labels,
                num_classes=len(train_set.classes), k=config.knn_k, t=config.knn_t,
            )  # fmt: skip
        if world > 1:  # BatchNorm buffers differ across ranks: rank 0's number is the number
            dist.broadcast_object_list(acc_, src=0)
        return acc_[0]

    def state_dict() -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(config), "version": dcl_teach.__version__,
            "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
            "order_generator": order_gen.get_state(), "aug_generator": aug_gen.get_state(),
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
            "elapsed": elapsed + time.perf_counter() - call_start, "perm": perm,
            "acc": {"loss": loss_sum.cpu(), "q_b": q_sum.cpu(),
                    "seconds": acc["seconds"] + time.perf_counter() - epoch_start},
            "records": list(records),
        }  # fmt: skip

    def checkpoint() -> None:
        if ckpt is not None and rank == 0:
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt, state_dict())
        if world > 1:
            dist.barrier()

    def record(steps: int, complete: bool, epoch_time: float, do_eval: bool) -> dict[str, Any]:
        return {
            "epoch": epoch + 1, "step": global_step, "complete": complete,
            "loss": (loss_sum / steps).item(), "q_b": (q_sum / steps).item(),
            "knn_acc": evaluate() if do_eval else None,
            "lr": optimizer.param_groups[0]["lr"], "images_per_s": steps * batch / epoch_time,
            "epoch_time_s": epoch_time,
            "wall_time_s": elapsed + time.perf_counter() - call_start,
        }  # fmt: skip

    bar = tqdm(
        total=min(total_steps, config.max_steps or total_steps), initial=global_step,
        disable=not (config.progress and rank == 0), desc=f"{config.loss} B={batch}",
        unit="step", dynamic_ncols=True,
    )  # fmt: skip
    stop = config.max_steps is not None and global_step >= config.max_steps
    raw_model.train()
    while epoch < config.epochs and not stop:
        if step_in_epoch == 0:
            perm = torch.randperm(n, generator=order_gen)  # (n,) this epoch's data order
            acc = {"loss": torch.zeros(()), "q_b": torch.zeros(()), "seconds": 0.0}
        epoch_start = time.perf_counter()
        loss_sum, q_sum = acc["loss"].to(device), acc["q_b"].to(device)  # () running sums
        order = perm.to(device)
        for s in range(step_in_epoch, steps_per_epoch):
            images = train_set.images[order[s * batch : (s + 1) * batch]]  # (B, C, H, W) uint8
            v1, v2 = two_views(images, recipe, generator=aug_gen)  # (B, C, H, W) each
            x = torch.cat([v1[shard], v2[shard]])  # (2B/W, C, H, W) this rank's share
            with autocast():
                z = step_model(x)  # (2B/W, D)
            z1, z2 = z.float().chunk(2)  # (B/W, D) each
            loss = loss_fn(z1, z2, **loss_kwargs)  # mean over the global batch's 2B anchors
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            with torch.no_grad():
                q = coupling(gather_no_grad(z1), gather_no_grad(z2), tau=config.tau)  # (2B,)
            loss_sum += loss.detach()
            q_sum += q.mean()
            global_step, step_in_epoch = global_step + 1, s + 1
            stop = config.max_steps is not None and global_step >= config.max_steps
            bar.update(1)
            if config.progress and rank == 0 and global_step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
            info = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step}
            if step_in_epoch < steps_per_epoch:  # the epoch's last step is handled below
                every = config.checkpoint_every
                if stop or (every and global_step % every == 0):
                    checkpoint()
                if callback is not None:
                    callback({**info, "loss": loss.item()})
            if stop:
                break
        epoch_time = acc["seconds"] + time.perf_counter() - epoch_start
        if step_in_epoch < steps_per_epoch:  # cut short by max_steps: report, do not keep
            records_out = [*records, record(step_in_epoch, False, epoch_time, True)]
            break
        last = epoch + 1 == config.epochs
        do_eval = last or (epoch + 1) % config.eval_every == 0
        records.append(record(steps_per_epoch, True, epoch_time, do_eval))
        epoch, step_in_epoch = epoch + 1, 0
        loss_sum, q_sum = torch.zeros((), device=device), torch.zeros((), device=device)
        epoch_start, acc["seconds"] = time.perf_counter(), 0.0
        checkpoint()
        if config.out_dir and rank == 0:
            _history(config, records, device, world, call_start, elapsed).save(config.out_dir)
        if callback is not None:
            callback({**info, "loss": loss.item()})
    else:
        records_out = records
    bar.close()
    history = _history(config, records_out, device, world, call_start, elapsed)
    history.meta.update(steps_per_epoch=steps_per_epoch, global_step=global_step,
                        resumed_from_step=resumed_from)  # fmt: skip
    history.model = raw_model.eval()
    if config.out_dir and rank == 0:
        history.save(config.out_dir)
    return history


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
