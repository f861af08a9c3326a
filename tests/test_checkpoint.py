"""Tests for dcl_teach.checkpoint: checksummed checkpoints and the History files."""

from __future__ import annotations

import json

import pytest
import torch

from dcl_teach.checkpoint import CheckpointError, History, load_checkpoint, save_checkpoint
from dcl_teach.config import TrainConfig


def test_checkpoint_roundtrip_and_atomicity(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.arange(3), "b": [1.5, None]})
    save_checkpoint(path, {"a": torch.arange(4), "b": []})  # replaces the old file
    state = load_checkpoint(path)
    assert torch.equal(state["a"], torch.arange(4)) and state["b"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


DAMAGES = ("truncate", "flip", "garbage")


def damage_file(path, damage: str) -> None:
    """Cut the file in half, flip one byte in its middle, or replace it with garbage."""
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip":
        blob[len(blob) // 2] ^= 0xFF
    else:
        blob = bytearray(b"not a checkpoint")
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_file_is_refused_with_a_clear_error(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": torch.arange(100)})
    damage_file(path, damage)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_config_mismatch_names_the_fields_and_ignores_resume_free_ones(tmp_path):
    import dataclasses

    path = tmp_path / "c.pt"
    saved = TrainConfig(max_steps=3)
    save_checkpoint(path, {"config": dataclasses.asdict(saved)})
    load_checkpoint(path, TrainConfig(max_steps=9, progress=False))  # resume-free fields
    with pytest.raises(CheckpointError, match="tau: 0.1 in the checkpoint, 0.3 now"):
        load_checkpoint(path, TrainConfig(tau=0.3))


def test_history_save_and_load(tmp_path):
    records = [
        {"epoch": 1, "loss": 2.0, "knn_acc": None},
        {"epoch": 2, "loss": 1.5, "knn_acc": 0.9},
    ]
    h = History(records=records, config={"loss": "dcl"}, meta={"device": "cpu"})
    h.save(tmp_path)
    back = History.load(tmp_path)
    assert back == h and back.final_knn == 0.9 and back.column("loss") == [2.0, 1.5]
    assert json.loads((tmp_path / "history.json").read_text())["config"] == {"loss": "dcl"}
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == "epoch,loss,knn_acc"
