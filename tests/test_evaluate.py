"""Tests for dcl_teach.evaluate: the weighted kNN vote against a loop, the probe, baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcl_teach.data import load_dataset
from dcl_teach.evaluate import (
    baselines,
    embed,
    few_label_indices,
    knn_accuracy,
    knn_predict,
    linear_probe,
    memory_bank_indices,
    normalize_images,
    pixel_features,
)
from dcl_teach.models import build_model


def knn_loop(train_feats, train_labels, test_feats, *, num_classes, k, t):
    """Reference: the weighted vote written one query and one neighbour at a time."""
    preds = []
    for q in test_feats.tolist():
        sims = [sum(a * b for a, b in zip(q, x)) for x in train_feats.tolist()]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[: min(k, len(sims))]
        scores = [0.0] * num_classes
        for j in order:
            scores[int(train_labels[j])] += math.exp(sims[j] / t)
        preds.append(max(range(num_classes), key=lambda c: (scores[c], -c)))
    return torch.tensor(preds)


def clustered(n_per_class: int, *, classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1)  # (C, D)
    labels = torch.arange(classes).repeat_interleave(n_per_class)  # (C*n,)
    x = centres[labels] + spread * torch.randn(len(labels), dim, generator=g)  # (C*n, D)
    return F.normalize(x, dim=1), labels


def test_knn_on_separable_set_is_perfect():
    bank, bank_labels = clustered(30, classes=4, dim=8, spread=0.05, seed=0)
    test, test_labels = clustered(10, classes=4, dim=8, spread=0.05, seed=0)
    assert knn_accuracy(bank, bank_labels, test, test_labels, k=200, t=0.1) == 1.0


@pytest.mark.parametrize("k", [1, 5, 17, 200])
@pytest.mark.parametrize("t", [0.05, 0.1, 1.0])
def test_knn_matches_loop_reference(k, t):
    bank, bank_labels = clustered(12, classes=5, dim=6, spread=0.8, seed=1)
    test, _ = clustered(8, classes=5, dim=6, spread=0.8, seed=2)
    expected = knn_loop(bank, bank_labels, test, num_classes=5, k=k, t=t)
    got = knn_predict(bank, bank_labels, test, num_classes=5, k=k, t=t)
    assert torch.equal(got, expected)


def test_knn_chunking_does_not_change_predictions():
    bank, bank_labels = clustered(20, classes=3, dim=5, spread=1.0, seed=3)
    test, _ = clustered(20, classes=3, dim=5, spread=1.0, seed=4)
    full = knn_predict(bank, bank_labels, test, num_classes=3, k=10, chunk_size=1000)
    for chunk in (1, 7, 60):
        assert torch.equal(
            knn_predict(bank, bank_labels, test, num_classes=3, k=10, chunk_size=chunk), full
        )


def test_knn_weights_are_exp_sim_over_t_not_counts():
    # Two far neighbours of class 0 against one very close neighbour of class 1: a plain
    # majority vote says 0, the exp(sim/t) weights at t=0.1 say 1.
    bank = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    query = F.normalize(torch.tensor([[0.3, 1.0]]), dim=1)
    assert knn_predict(bank, labels, query, num_classes=2, k=3, t=0.1).item() == 1
    assert knn_predict(bank, labels, query, num_classes=2, k=3, t=100.0).item() == 0


def test_knn_k_is_clamped_to_the_memory_bank():
    bank = torch.eye(3)
    assert knn_predict(bank, torch.tensor([0, 1, 2]), bank, num_classes=3, k=200).tolist() == [
        0,
        1,
        2,
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"k": 0}, "positive"), ({"t": 0.0}, "positive"), ({"chunk_size": 0}, "positive")],
)
def test_knn_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        knn_predict(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), num_classes=2, **kwargs)


def test_knn_shape_errors():
    with pytest.raises(ValueError, match="differ in width"):
        knn_predict(torch.eye(2), torch.tensor([0, 1]), torch.ones(1, 3), num_classes=2)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(torch.eye(2), torch.tensor([0]), torch.eye(2), num_classes=2)


def separable(n: int, *, w: torch.Tensor, generator: torch.Generator, margin: float = 0.5):
    """Points labelled by the linear rule argmax(x @ w), keeping those at least ``margin`` from a tie."""
    x = torch.randn(4 * n, w.shape[0], generator=generator)
    scores = (x @ w).sort(dim=1, descending=True).values  # (4n, C)
    keep = (scores[:, 0] - scores[:, 1]) > margin
    x = x[keep][:n]
    return x, (x @ w).argmax(dim=1)


def test_linear_probe_learns_a_linearly_separable_set():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 3, generator=g)  # a random linear rule over 10-d inputs
    x, y = separable(300, w=w, generator=g)
    x_test, y_test = separable(200, w=w, generator=g)
    assert linear_probe(x, y, x, y, epochs=300, lr=0.05) == 1.0
    assert linear_probe(x, y, x_test, y_test, epochs=300, lr=0.05) > 0.95
    gen = torch.Generator().manual_seed(0)
    acc = linear_probe(x, y, x_test, y_test, epochs=50, lr=0.05, batch_size=32, generator=gen)
    assert acc > 0.95


def test_linear_probe_is_chance_on_random_labels():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 5, generator=g), torch.randint(0, 4, (200,), generator=g)
    x_test, y_test = torch.randn(2000, 5, generator=g), torch.randint(0, 4, (2000,), generator=g)
    assert abs(linear_probe(x, y, x_test, y_test, epochs=100) - 0.25) < 0.05


def test_linear_probe_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        linear_probe(
            torch.eye(2), torch.tensor([0, 1]), torch.eye(2), torch.tensor([0, 1]), epochs=0
        )


def test_normalize_images_uses_the_dataset_statistics():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    from dcl_teach.data import mean_std

    (m,), (s,) = mean_std("digits")
    torch.testing.assert_close(
        normalize_images(x, name="digits").flatten(), torch.tensor([-m / s, (1 - m) / s])
    )
    with pytest.raises(TypeError, match="uint8"):
        normalize_images(x.float(), name="digits")


def test_embed_is_unit_norm_batch_independent_and_restores_training_mode():
    torch.manual_seed(0)
    model = build_model("digits", feature_dim=16).train()
    images = load_dataset("digits", split="test").images[:50]
    h = embed(model, images, name="digits", batch_size=7)
    assert model.training  # restored
    torch.testing.assert_close(h.norm(dim=1), torch.ones(50))
    # eval mode: an image's features do not depend on the batch it is embedded with
    torch.testing.assert_close(h, embed(model, images, name="digits", batch_size=50))
    expected = F.normalize(model.eval().features(normalize_images(images, name="digits")), dim=1)
    torch.testing.assert_close(h, expected.detach())


def test_embed_accepts_a_plain_module():
    h = embed(nn.Flatten(), torch.ones(3, 1, 8, 8, dtype=torch.uint8), name="digits", device="cpu")
    assert h.shape == (3, 64)


def test_pixel_features():
    images = load_dataset("digits", split="test").images[:4]
    f = pixel_features(images, name="digits")
    assert f.shape == (4, 64)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(4))


def test_few_label_indices_picks_per_class_and_is_seeded():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 1)
    idx = few_label_indices(labels, per_class=2, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(labels[idx]).tolist() == [2, 2, 1]
    again = few_label_indices(labels, per_class=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx, again)
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == len(idx)
    assert torch.equal(memory_bank_indices(labels, 2, seed=0), idx)
    assert torch.equal(memory_bank_indices(labels, None, seed=0), torch.arange(9))
    with pytest.raises(ValueError, match="per_class"):
        few_label_indices(labels, per_class=0, generator=torch.Generator())


def test_baselines_on_digits():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    full = baselines(train, test)
    few = baselines(train, test, num_labels_per_class=5)
    # Raw pixels are a strong kNN baseline on 8x8 digits; an untrained CNN is weaker but far
    # above chance (10%); five labels per class cost both.
    assert 0.9 < full["raw_pixels"] < 1.0
    assert 0.5 < full["random_encoder"] < full["raw_pixels"]
    assert few["raw_pixels"] < full["raw_pixels"] and few["random_encoder"] < full["random_encoder"]
    assert few == baselines(train, test, num_labels_per_class=5)  # seeded
