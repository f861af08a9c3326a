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

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

import dcl_teach
from dcl_teach.augment import two_views
from dcl_teach.checkpoint import (
    CHECKPOINT_NAME,
    TIMING_KEYS,
    CheckpointError,
    History,
    load_checkpoint,
    save_checkpoint,
)
from dcl_teach.config import AMP_MODES, PRESETS, RESUME_FREE_FIELDS, TrainConfig
from dcl_teach.distributed import gather_no_grad
from dcl_teach.evaluate import embed, knn_accuracy
from dcl_teach.grads import coupling
from dcl_teach.grid import plot_comparison, run_grid, summarize
from dcl_teach.losses import LOSSES
from dcl_teach.runstate import (
    Context,
    RunState,
    lr_factor,
    resolve_device,
    setup_context,
    setup_distributed,
)

__all__ = [  # the training API; the names from the modules it is built on stay importable here
    "AMP_MODES",
    "CHECKPOINT_NAME",
    "PRESETS",
    "RESUME_FREE_FIELDS",
    "TIMING_KEYS",
    "CheckpointError",
    "History",
    "RunState",
    "TrainConfig",
    "load_checkpoint",
    "lr_factor",
    "plot_comparison",
    "resolve_device",
    "run_grid",
    "save_checkpoint",
    "summarize",
    "train",
]


def train(
    config: TrainConfig,
    *,
    resume: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
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
        callbacks: more such functions, called in order after ``callback``.

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
    rank, world, local_rank, owns_group = setup_distributed(config)
    try:
        hooks = [*([callback] if callback is not None else []), *callbacks]
        return _train(config, resume, hooks, rank=rank, world=world, local_rank=local_rank)
    finally:
        if owns_group:
            dist.destroy_process_group()


def _train(config, resume, callbacks, *, rank, world, local_rank) -> History:
    ctx = setup_context(config, rank=rank, world=world, local_rank=local_rank)
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
        initial=run.global_step,
        disable=not (config.progress and rank == 0),
        desc=f"{config.loss} B={ctx.batch}",
        unit="step",
        dynamic_ncols=True,
    )
    records = _train_epochs(ctx, run, step_model, bar, callbacks)
    bar.close()
    history = _history(config, records, ctx.device, world, run.call_start, run.elapsed)
    history.meta.update(
        steps_per_epoch=ctx.steps_per_epoch,
        global_step=run.global_step,
        resumed_from_step=resumed_from,
    )
    history.model = run.model.eval()
    if config.out_dir and rank == 0:
        history.save(config.out_dir)
    return history


def _step_model(ctx: Context, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model the training steps call: wrapped by DDP over ranks, compiled if asked."""
    if ctx.world > 1:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(model) if ctx.config.compile else model


def _train_epochs(ctx: Context, run: RunState, step_model, bar, callbacks) -> list[dict]:
    """Train until the last epoch or ``max_steps``; return the records to report.

    A run stopped by ``max_steps`` in the middle of an epoch reports that epoch as a record
    with ``complete=False`` (evaluated), which is not kept in the checkpoint.
    """
    config = ctx.config
    stop = ctx.stop_at(run.global_step)
    run.model.train()
    while run.epoch < config.epochs and not stop:
        info, loss, stop = _run_epoch(ctx, run, step_model, bar, callbacks)
        if run.step_in_epoch < ctx.steps_per_epoch:  # cut short by max_steps: report, not keep
            epoch_time = run.epoch_time()
            return [*run.records, _record(ctx, run, run.step_in_epoch, False, epoch_time, True)]
        last = run.epoch + 1 == config.epochs
        do_eval = last or (run.epoch + 1) % config.eval_every == 0
        run.records.append(_record(ctx, run, ctx.steps_per_epoch, True, run.epoch_time(), do_eval))
        run.end_epoch(ctx.device)
        _checkpoint(ctx, run)
        if config.out_dir and ctx.rank == 0:
            _history(config, run.records, ctx.device, ctx.world, run.call_start, run.elapsed).save(
                config.out_dir
            )
        _notify(callbacks, info, loss)
    return run.records


def _notify(callbacks, info: dict[str, Any], loss: torch.Tensor) -> None:
    """Call every callback with the step's position and its loss (one host sync, if any)."""
    if callbacks:
        event = {**info, "loss": loss.item()}
        for callback in callbacks:
            callback(event)


def _run_epoch(ctx: Context, run: RunState, step_model, bar, callbacks):
    """Take the steps left in the current epoch (fewer if ``max_steps`` is reached).

    Checkpoints every ``checkpoint_every`` steps and when ``max_steps`` stops the run, then
    calls the ``callbacks``; the epoch's last step leaves both to :func:`_train_epochs`.

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
        info = {
            "epoch": run.epoch,
            "step_in_epoch": run.step_in_epoch,
            "global_step": run.global_step,
        }
        if run.step_in_epoch < ctx.steps_per_epoch:  # the epoch's last step is handled later
            every = config.checkpoint_every
            if stop or (every and run.global_step % every == 0):
                _checkpoint(ctx, run)
            _notify(callbacks, info, loss)
        if stop:
            break
    return info, loss, stop


def _train_step(ctx: Context, run: RunState, step_model, images: torch.Tensor) -> torch.Tensor:
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


def _checkpoint(ctx: Context, run: RunState) -> None:
    """Save the run on rank 0 (if there is an ``out_dir``); all ranks wait for it."""
    ckpt = ctx.checkpoint_path
    if ckpt is not None and ctx.rank == 0:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(ckpt, run.to_checkpoint(ctx.config))
    if ctx.world > 1:
        dist.barrier()


def _record(
    ctx: Context, run: RunState, steps: int, complete: bool, epoch_time: float, do_eval: bool
) -> dict[str, Any]:
    """The history record of the current epoch after ``steps`` of its steps."""
    return {
        "epoch": run.epoch + 1,
        "step": run.global_step,
        "complete": complete,
        "loss": (run.loss_sum / steps).item(),
        "q_b": (run.q_sum / steps).item(),
        "knn_acc": _evaluate(ctx, run.model) if do_eval else None,
        "lr": run.optimizer.param_groups[0]["lr"],
        "images_per_s": steps * ctx.batch / epoch_time,
        "epoch_time_s": epoch_time,
        "wall_time_s": run.wall_time(),
    }


def _evaluate(ctx: Context, model: torch.nn.Module) -> float:
    """Weighted-kNN accuracy of the frozen features on the test split (computed on rank 0)."""
    config, train_set, test_set = ctx.config, ctx.train_set, ctx.test_set
    acc = [None]
    if ctx.rank == 0:
        with ctx.autocast():
            h_bank = embed(
                model,
                train_set.images[ctx.bank],
                name=config.dataset,
                batch_size=config.eval_batch_size,
                device=ctx.device,
            )
            h_test = embed(
                model,
                test_set.images,
                name=config.dataset,
                batch_size=config.eval_batch_size,
                device=ctx.device,
            )
        acc[0] = knn_accuracy(
            h_bank,
            train_set.labels[ctx.bank],
            h_test,
            test_set.labels,
            num_classes=len(train_set.classes),
            k=config.knn_k,
            t=config.knn_t,
        )
    if ctx.world > 1:  # BatchNorm buffers differ across ranks: rank 0's number is the number
        dist.broadcast_object_list(acc, src=0)
    return acc[0]


def _history(config, records, device, world, call_start, elapsed) -> History:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    meta = {
        "dcl_teach_version": dcl_teach.__version__,
        "torch_version": torch.__version__,
        "device": str(device),
        "device_name": name,
        "world_size": world,
        "wall_time_s": elapsed + time.perf_counter() - call_start,
    }
    return History(records=list(records), config=dataclasses.asdict(config), meta=meta)
