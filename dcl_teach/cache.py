"""Embeddings of a trained encoder, computed once and cached on disk.

Notebook 03 looks at the coupling factor q_B of a real encoder's embeddings. Training that
encoder takes seconds on the digits, but a notebook that retrains on every run is slow to
iterate on, so :func:`trained_embeddings` trains it once, embeds two augmented views of every
training image, and keeps the result in a small file under :func:`dcl_teach.data.data_dir`:

* the file name carries a digest of everything that changes the result (the training config,
  the seed of the views, the package version), so another config never reads a stale file;
* it is written atomically with a sha256 checksum (:func:`dcl_teach.train.save_checkpoint`)
  and verified on load: a truncated, corrupt or mismatching file is rebuilt, never trusted;
* the training and the embedding run on one CPU thread, so that a rebuilt cache is bit-for-bit
  the one it replaces on the same machine (multithreaded float sums round differently with the
  thread count, and a few epochs of SGD amplify that into visibly different embeddings).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import dcl_teach
from dcl_teach.augment import recipe_for, two_views
from dcl_teach.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dcl_teach.config import BOOKKEEPING_FIELDS, TrainConfig
from dcl_teach.data import data_dir, load_dataset
from dcl_teach.train import train

CACHE_FORMAT = 1  # bump when the content of a cache file changes meaning
CACHE_DIR = "embeddings"  # sub-folder of data_dir()
NEUTRAL_FIELDS = BOOKKEEPING_FIELDS  # fields that do not change the trained weights
RECORD_KEYS = ("epoch", "loss", "q_b", "knn_acc")  # per-epoch history kept (no timings)


@dataclass(frozen=True)
class Embeddings:
    """Two views of a dataset embedded by a trained encoder.

    Attributes:
        z1: (M, D) float32 projection-head outputs of the first views (not normalised), the
            input the contrastive loss sees.
        z2: (M, D) the second views; row i of both comes from image i.
        labels: (M,) int64 class of each image.
        records: the training history, one dict per epoch with ``RECORD_KEYS``.
        key: what the embeddings depend on (config, views seed, versions).
        from_cache: True when read from disk, False when just computed.
    """

    z1: torch.Tensor
    z2: torch.Tensor
    labels: torch.Tensor
    records: list[dict[str, Any]]
    key: dict[str, Any]
    from_cache: bool


def cache_key(config: TrainConfig, *, views_seed: int) -> dict[str, Any]:
    """Everything the cached embeddings depend on, as a JSON-ready dict.

    Example:
        >>> a = cache_key(TrainConfig(epochs=2), views_seed=0)
        >>> a == cache_key(TrainConfig(epochs=2, progress=False), views_seed=0)
        True
        >>> a == cache_key(TrainConfig(epochs=3), views_seed=0)
        False

    Taught in notebook 03.
    """
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in NEUTRAL_FIELDS}
    return {
        "config": fields,
        "views_seed": views_seed,
        "format": CACHE_FORMAT,
        "dcl_teach": dcl_teach.__version__,
        "torch": str(torch.__version__),
    }


def cache_path(
    config: TrainConfig, *, views_seed: int, root: str | os.PathLike | None = None
) -> Path:
    """Where the embeddings of ``config`` live: ``data_dir(root)/embeddings/<name>.pt``.

    Example:
        >>> cache_path(TrainConfig(), views_seed=0, root="/data").name
        'digits-dcl-...pt'

    Taught in notebook 03.
    """
    text = json.dumps(cache_key(config, views_seed=views_seed), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return data_dir(root) / CACHE_DIR / f"{config.dataset}-{config.loss}-{digest}.pt"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def compute_embeddings(config: TrainConfig, *, views_seed: int) -> Embeddings:
    """Train an encoder as ``config`` says and embed two augmented views of its training set.

    Args:
        config: the training run (``progress`` and ``out_dir`` are honoured).
        views_seed: seeds the augmentations of the two embedded views.

    Returns:
        :class:`Embeddings` with ``from_cache=False``, on the CPU.

    Taught in notebook 03.
    """
    with _one_thread():
        history = train(config, resume=False)
        model = history.model.cpu().eval()
        images = load_dataset(config.dataset, split="train", root=config.data_root)
        generator = torch.Generator().manual_seed(views_seed)
        v1, v2 = two_views(images.images, recipe_for(config.dataset), generator=generator)
        with torch.no_grad():
            z1, z2 = model(v1).float(), model(v2).float()  # (M, D) each
    records = [{k: r[k] for k in RECORD_KEYS} for r in history.records]
    key = cache_key(config, views_seed=views_seed)
    return Embeddings(z1, z2, images.labels.cpu(), records, key, from_cache=False)


def _valid(state: dict[str, Any], key: dict[str, Any]) -> bool:
    z1, z2, labels = state.get("z1"), state.get("z2"), state.get("labels")
    return (
        state.get("key") == key
        and isinstance(z1, torch.Tensor)
        and isinstance(z2, torch.Tensor)
        and isinstance(labels, torch.Tensor)
        and z1.dim() == 2
        and z1.shape == z2.shape
        and labels.shape == z1.shape[:1]
        and bool(torch.isfinite(z1).all() and torch.isfinite(z2).all())
    )


def trained_embeddings(
    config: TrainConfig,
    *,
    views_seed: int = 0,
    root: str | os.PathLike | None = None,
    rebuild: bool = False,
) -> Embeddings:
    """The embeddings of :func:`compute_embeddings`, from the cache when it holds a valid copy.

    Args:
        config: the training run.
        views_seed: seeds the augmentations of the two embedded views.
        root: data folder (see :func:`dcl_teach.data.data_dir`); the cache goes in its
            ``embeddings/`` sub-folder.
        rebuild: recompute and overwrite even if a valid file exists.

    Returns:
        :class:`Embeddings`; ``from_cache`` says whether the file was used. A missing, corrupt
        or mismatching file is recomputed and rewritten (atomically).

    Example:
        >>> import tempfile
        >>> cfg = TrainConfig(epochs=1, max_steps=1, batch_size=32, progress=False, knn_k=5)
        >>> root = tempfile.mkdtemp()
        >>> first = trained_embeddings(cfg, root=root)
        >>> again = trained_embeddings(cfg, root=root)
        >>> first.from_cache, again.from_cache, torch.equal(first.z1, again.z1)
        (False, True, True)

    Taught in notebook 03.
    """
    path = cache_path(config, views_seed=views_seed, root=root)
    key = cache_key(config, views_seed=views_seed)
    if not rebuild and path.exists():
        try:
            state = load_checkpoint(path)
        except (CheckpointError, OSError, KeyError, ValueError):
            state = {}  # unreadable: rebuild below
        if _valid(state, key):
            return Embeddings(
                state["z1"],
                state["z2"],
                state["labels"],
                list(state["records"]),
                key,
                from_cache=True,
            )
    emb = compute_embeddings(config, views_seed=views_seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(
        path, {"key": key, "z1": emb.z1, "z2": emb.z2, "labels": emb.labels, "records": emb.records}
    )
    return emb
