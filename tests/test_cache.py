"""Tests for dcl_teach.cache: keyed, verified, atomically written embeddings of a trained encoder."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dcl_teach.cache import RECORD_KEYS, cache_key, cache_path, trained_embeddings
from dcl_teach.train import TrainConfig

# A run of two SGD steps: enough to exercise the whole path in about a second.
TINY = TrainConfig(
    loss="infonce", epochs=1, max_steps=2, batch_size=32, knn_k=5, device="cpu", progress=False
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny run's embeddings, computed once into a fresh cache folder."""
    root = tmp_path_factory.mktemp("data")
    return root, trained_embeddings(TINY, root=root)


def test_cold_cache_computes_and_writes(built):
    root, emb = built
    assert not emb.from_cache
    assert cache_path(TINY, views_seed=0, root=root).is_file()
    assert emb.z1.shape == emb.z2.shape == (1437, TINY.proj_dim)  # the digits training split
    assert emb.labels.shape == (1437,) and set(emb.labels.tolist()) == set(range(10))
    assert not torch.equal(emb.z1, emb.z2)  # two different augmentations
    assert [set(r) for r in emb.records] == [set(RECORD_KEYS)]


def test_warm_cache_returns_identical_tensors(built):
    root, emb = built
    again = trained_embeddings(TINY, root=root)
    assert again.from_cache
    assert torch.equal(again.z1, emb.z1) and torch.equal(again.z2, emb.z2)
    assert torch.equal(again.labels, emb.labels) and again.records == emb.records


def test_rebuild_is_bit_for_bit_the_same(built, tmp_path):
    _, emb = built
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the cache trains on one thread whatever the caller uses
    try:
        fresh = trained_embeddings(TINY, root=tmp_path, rebuild=True)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert not fresh.from_cache
    assert torch.equal(fresh.z1, emb.z1) and torch.equal(fresh.z2, emb.z2)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_file_is_rebuilt(built, tmp_path, damage):
    _, emb = built
    path = cache_path(TINY, views_seed=0, root=tmp_path)
    trained_embeddings(TINY, root=tmp_path)
    blob = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        path.write_bytes(blob[:-100] + bytes([blob[-100] ^ 0xFF]) + blob[-99:])
    else:
        path.write_bytes(b"not a cache file")
    again = trained_embeddings(TINY, root=tmp_path)
    assert not again.from_cache and torch.equal(again.z1, emb.z1)
    assert trained_embeddings(TINY, root=tmp_path).from_cache  # and the file is whole again


def test_file_of_another_config_is_not_trusted(built, tmp_path):
    """A valid file under the wrong name (copied by hand) fails the key check and is rebuilt."""
    root, emb = built
    other = dataclasses.replace(TINY, seed=1)
    target = cache_path(other, views_seed=0, root=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(cache_path(TINY, views_seed=0, root=root).read_bytes())
    got = trained_embeddings(other, root=tmp_path)
    assert not got.from_cache and not torch.equal(got.z1, emb.z1)


def test_key_ignores_only_fields_that_do_not_change_the_result():
    base = cache_key(TINY, views_seed=0)
    for neutral in ({"progress": True}, {"out_dir": "/elsewhere"}, {"eval_batch_size": 7}):
        assert cache_key(dataclasses.replace(TINY, **neutral), views_seed=0) == base
    for change in ({"seed": 1}, {"loss": "dcl"}, {"tau": 0.2}, {"max_steps": 3}):
        other = dataclasses.replace(TINY, **change)
        assert cache_key(other, views_seed=0) != base
        assert cache_path(other, views_seed=0) != cache_path(TINY, views_seed=0)
    assert cache_key(TINY, views_seed=1) != base


def test_writes_leave_no_temporary_files(built):
    root, _ = built
    folder = cache_path(TINY, views_seed=0, root=root).parent
    assert [p.name for p in folder.iterdir()] == [cache_path(TINY, views_seed=0).name]
