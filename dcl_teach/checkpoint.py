"""What a training run leaves behind: its :class:`History` and its checksummed checkpoints.

A checkpoint is ``magic + sha256(payload) + newline + payload`` (the payload is ``torch.save``
of the run state), written atomically (:mod:`dcl_teach.atomic`), so a killed run leaves the
previous checkpoint or the new one, and a truncated or corrupted file is detected on reading
instead of being resumed from.

Taught in notebook 06.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dcl_teach.atomic import atomic_write
from dcl_teach.config import RESUME_FREE_FIELDS, TrainConfig

TIMING_KEYS = ("images_per_s", "epoch_time_s", "wall_time_s")  # differ between identical runs
CHECKPOINT_NAME = "checkpoint.pt"
_MAGIC = b"DCLTEACH-CKPT-1\n"  # file = magic, sha256 hex digest of the payload, newline, payload


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
        atomic_write(out / "history.json", text)
        buffer = io.StringIO()
        keys = list(self.records[0]) if self.records else ["epoch"]
        writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write(out / "history.csv", buffer.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a ``history.json`` (or the folder holding it)."""
        path = Path(path)
        data = json.loads((path / "history.json" if path.is_dir() else path).read_text())
        return cls(records=data["records"], config=data["config"], meta=data["meta"])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or that belongs to another configuration."""


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
    atomic_write(path, _MAGIC + digest + b"\n" + payload)


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
