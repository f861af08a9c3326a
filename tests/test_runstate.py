"""Tests for dcl_teach.runstate: the learning-rate schedule, devices and the run state."""

from __future__ import annotations

import math

import pytest
import torch

from dcl_teach.config import TrainConfig
from dcl_teach.runstate import RunState, lr_factor, resolve_device, setup_context


def test_lr_schedule_warms_up_linearly_then_decays_by_cosine():
    f = [lr_factor(s, warmup_steps=4, total_steps=20) for s in range(20)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == 1.0 and all(a >= b for a, b in zip(f[4:], f[5:]))
    assert math.isclose(f[12], 0.5)  # halfway through the cosine
    assert 0 < f[-1] < 0.01
    assert lr_factor(0, warmup_steps=0, total_steps=10) == 1.0


# --------------------------------------------------------------------------- training


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_run_state_round_trips_through_a_checkpoint():
    config = TrainConfig(feature_dim=16, proj_dim=8, batch_size=64, epochs=2, progress=False)
    ctx = setup_context(config, rank=0, world=1, local_rank=0)
    run = RunState.new(ctx)
    run.begin_epoch(len(ctx.train_set), ctx.device)
    run.global_step, run.step_in_epoch = 5, 5
    run.loss_sum += 2.5
    state = run.to_checkpoint(config)
    back = RunState.from_checkpoint(ctx, state)
    assert (back.global_step, back.step_in_epoch, back.epoch) == (5, 5, 0)
    assert torch.equal(back.perm, run.perm) and back.loss_sum.item() == 2.5
    assert torch.equal(back.order_gen.get_state(), run.order_gen.get_state())
    for key, value in run.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[key], value), key
    assert math.isclose(ctx.total_steps, 2 * (len(ctx.train_set) // 64))
