"""How good are the features? Weighted kNN, a linear probe and two baselines, on frozen features.

The self-supervised monitor every CIFAR contrastive repository prints once per epoch is a
weighted k-nearest-neighbour vote (Wu et al., 2018): embed the training images (the memory
bank) and the test images with the frozen encoder, L2-normalise, and let each test image's
``k`` most cosine-similar training images vote for their labels with weight
``exp(similarity / t)``. No training, no hyperparameter search: a cheap, honest number.

The linear probe (logistic regression on frozen features) is the paper's headline metric on
ImageNet. The baselines say what the number means: kNN on the raw normalised pixels, and kNN on
the features of an untrained, randomly initialised encoder of the same architecture.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcl_teach.data import ImageSet, mean_std, standardize
from dcl_teach.models import build_model


def normalize_images(images: torch.Tensor, *, name: str) -> torch.Tensor:
    """uint8 images to float32, scaled to 0..1 and standardised with the dataset's mean and std.

    Args:
        images: uint8 (B, C, H, W).
        name: dataset name for :func:`dcl_teach.data.mean_std`.

    Returns:
        float32 (B, C, H, W) on the device of ``images``.

    Raises:
        TypeError: if ``images`` is not uint8.

    Example:
        >>> x = normalize_images(torch.full((1, 1, 8, 8), 255, dtype=torch.uint8), name="digits")
        >>> round(x[0, 0, 0, 0].item(), 3)  # (1 - 0.3056) / 0.376, the digits statistics of mean_std
        1.847

    Taught in notebook 06.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (B, C, H, W), got {images.dtype}")
    return standardize(images.float() / 255.0, *mean_std(name))  # (B, C, H, W)


@torch.no_grad()
def embed(
    model: nn.Module,
    images: torch.Tensor,
    *,
    name: str,
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """L2-normalised encoder features of un-augmented images, in eval mode, without gradients.

    Args:
        model: a :class:`~dcl_teach.models.ContrastiveModel` (``.features``) or any module
            mapping images to (B, F).
        images: uint8 (M, C, H, W).
        name: dataset name (for the normalisation statistics).
        batch_size: images per forward pass; bounds memory.
        device: where to compute; the model's device when None.

    Returns:
        float32 (M, F) unit-norm features on ``device``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = build_model("digits", feature_dim=16)
        >>> h = embed(model, torch.zeros(5, 1, 8, 8, dtype=torch.uint8), name="digits")
        >>> h.shape, torch.allclose(h.norm(dim=1), torch.ones(5))
        (torch.Size([5, 16]), True)

    Taught in notebook 06.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if device is None:
        device = next(model.parameters()).device
    features = getattr(model, "features", model)
    was_training = model.training
    model.eval()  # BatchNorm uses its running statistics: a test image's feature is its own
    try:
        chunks = []
        for batch in images.split(batch_size):
            x = normalize_images(batch.to(device), name=name)  # (B, C, H, W)
            chunks.append(features(x).float())  # (B, F)
        h = torch.cat(chunks)  # (M, F)
    finally:
        model.train(was_training)
    return F.normalize(h, dim=1)  # (M, F)


def pixel_features(images: torch.Tensor, *, name: str) -> torch.Tensor:
    """Raw-pixel "features": normalised images, flattened and L2-normalised.

    Args:
        images: uint8 (M, C, H, W).
        name: dataset name (for the normalisation statistics).

    Returns:
        float32 (M, C*H*W) unit-norm rows.

    Example:
        >>> pixel_features(torch.zeros(3, 1, 8, 8, dtype=torch.uint8), name="digits").shape
        torch.Size([3, 64])

    Taught in notebook 06.
    """
    x = normalize_images(images, name=name).flatten(1)  # (M, C*H*W)
    return F.normalize(x, dim=1)  # (M, C*H*W)


@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    *,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Weighted kNN vote: each of the k nearest training features votes with exp(sim / t).

    Similarity is the dot product, so pass L2-normalised features to get cosine similarity.
    Test images are processed ``chunk_size`` at a time, so memory stays at
    ``chunk_size x M`` similarities whatever the size of the test set.

    Args:
        train_feats: (M, F) memory-bank features.
        train_labels: (M,) int64 labels in ``[0, num_classes)``.
        test_feats: (Q, F) query features.
        num_classes: number of classes C.
        k: neighbours per query; clamped to M.
        t: temperature of the vote weights (0.1 in the standard monitor).
        chunk_size: queries per chunk.

    Returns:
        (Q,) int64 predicted labels; ties go to the lower class index.

    Raises:
        ValueError: for mismatched shapes or non-positive ``k``, ``t`` or ``chunk_size``.

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
        >>> knn_predict(bank, torch.tensor([0, 0, 1]), torch.tensor([[0.1, 1.0]]),
        ...             num_classes=2, k=1).tolist()
        [1]

    Taught in notebook 06.
    """
    if train_feats.dim() != 2 or test_feats.dim() != 2:
        raise ValueError(
            f"features must be 2-D, got {tuple(train_feats.shape)} and {tuple(test_feats.shape)}"
        )
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(
            f"train and test features differ in width: {train_feats.shape[1]} vs "
            f"{test_feats.shape[1]}"
        )
    if train_labels.shape != train_feats.shape[:1]:
        raise ValueError(
            f"train_labels must have shape ({train_feats.shape[0]},), got "
            f"{tuple(train_labels.shape)}"
        )
    if k <= 0 or t <= 0 or chunk_size <= 0:
        raise ValueError(f"k, t and chunk_size must be positive, got {k}, {t}, {chunk_size}")
    k = min(k, train_feats.shape[0])
    preds = []
    for q in test_feats.split(chunk_size):
        sim = q @ train_feats.T  # (B, M)
        sim_k, idx = sim.topk(k, dim=1)  # (B, k)
        votes = (sim_k / t).exp()  # (B, k)
        scores = torch.zeros(q.shape[0], num_classes, device=q.device, dtype=votes.dtype)
        scores.scatter_add_(1, train_labels[idx], votes)  # (B, C)
        preds.append(scores.argmax(dim=1))  # (B,)
    return torch.cat(preds)  # (Q,)


def knn_accuracy(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_classes: int | None = None,
    k: int = 200,
    t: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy of :func:`knn_predict` on labelled test features.

    Args:
        train_feats, train_labels, test_feats: as in :func:`knn_predict`.
        test_labels: (Q,) int64 true labels.
        num_classes: C; inferred from the largest label when None.
        k, t, chunk_size: as in :func:`knn_predict`.

    Returns:
        Fraction of correct predictions in [0, 1].

    Example:
        >>> bank = torch.eye(2)
        >>> knn_accuracy(bank, torch.tensor([0, 1]), bank, torch.tensor([0, 1]), k=1)
        1.0

    Taught in notebook 06.
    """
    if num_classes is None:
        num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(
        train_feats,
        train_labels,
        test_feats,
        num_classes=num_classes,
        k=k,
        t=t,
        chunk_size=chunk_size,
    )
    return (pred == test_labels.to(pred.device)).float().mean().item()


def few_label_indices(
    labels: torch.Tensor, *, per_class: int, generator: torch.Generator
) -> torch.Tensor:
    """Indices of ``per_class`` randomly chosen examples of every class (the few-label setting).

    Args:
        labels: (M,) int64 labels.
        per_class: examples to keep per class (all of a class if it has fewer).
        generator: CPU generator that picks them.

    Returns:
        (K,) int64 sorted indices into ``labels``.

    Raises:
        ValueError: if ``per_class`` is not positive.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> few_label_indices(torch.tensor([0, 0, 0, 1, 1]), per_class=1, generator=g).shape
        torch.Size([2])

    Taught in notebook 06.
    """
    if per_class <= 0:
        raise ValueError(f"per_class must be positive, got {per_class}")
    cpu_labels = labels.cpu()
    keep = []
    for c in torch.unique(cpu_labels).tolist():
        members = torch.nonzero(cpu_labels == c).flatten()  # (M_c,)
        order = torch.randperm(members.numel(), generator=generator)  # (M_c,)
        keep.append(members[order[:per_class]])
    return torch.cat(keep).sort().values.to(labels.device)  # (K,)


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    epochs: int = 100,
    lr: float = 0.01,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    generator: torch.Generator | None = None,
) -> float:
    """Test accuracy of a logistic-regression classifier trained on frozen features.

    The features are standardised with the training set's mean and std, the classifier starts
    at zero (the problem is convex, so no random init is needed) and is trained with Adam on
    the cross-entropy, full-batch when ``batch_size`` is None.

    Args:
        train_feats: (M, F) frozen features of the labelled training images.
        train_labels: (M,) int64 labels.
        test_feats: (Q, F) features of the test images.
        test_labels: (Q,) int64 labels.
        epochs: passes over the training features.
        lr: Adam learning rate.
        batch_size: mini-batch size; None for full-batch steps.
        weight_decay: L2 penalty on the weights.
        generator: CPU generator for the mini-batch order (needed only with ``batch_size``).

    Returns:
        Test accuracy in [0, 1].

    Raises:
        ValueError: for non-positive ``epochs``, ``lr`` or ``batch_size``.

    Example:
        >>> x = torch.tensor([[-1.0], [-2.0], [1.0], [2.0]])
        >>> linear_probe(x, torch.tensor([0, 0, 1, 1]), x, torch.tensor([0, 0, 1, 1]), epochs=20)
        1.0

    Taught in notebook 06.
    """
    if epochs <= 0 or lr <= 0 or (batch_size is not None and batch_size <= 0):
        raise ValueError(
            f"epochs, lr and batch_size must be positive, got {epochs}, {lr}, {batch_size}"
        )
    train_feats, test_feats = train_feats.detach().float(), test_feats.detach().float()
    mean = train_feats.mean(dim=0, keepdim=True)  # (1, F)
    std = train_feats.std(dim=0, keepdim=True).clamp_min(1e-6) if len(train_feats) > 1 else 1.0
    x_train = (train_feats - mean) / std  # (M, F)
    x_test = (test_feats - mean) / std  # (Q, F)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    classifier = nn.Linear(x_train.shape[1], num_classes).to(x_train.device)
    nn.init.zeros_(classifier.weight)
    nn.init.zeros_(classifier.bias)
    opt = torch.optim.Adam(classifier.parameters(), lr=lr, weight_decay=weight_decay)
    m = x_train.shape[0]
    step = m if batch_size is None else batch_size
    with torch.enable_grad():
        for _ in range(epochs):
            order = (
                torch.arange(m) if batch_size is None else torch.randperm(m, generator=generator)
            )
            for idx in order.to(x_train.device).split(step):
                loss = F.cross_entropy(classifier(x_train[idx]), train_labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        pred = classifier(x_test).argmax(dim=1)  # (Q,)
    return (pred == test_labels).float().mean().item()


def baselines(
    train: ImageSet,
    test: ImageSet,
    *,
    k: int = 200,
    t: float = 0.1,
    seed: int = 0,
    num_labels_per_class: int | None = None,
    feature_dim: int | None = None,
    norm: str = "batch",
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """kNN accuracy of the two reference points: raw pixels and an untrained encoder.

    Args:
        train: labelled memory bank (uint8 images).
        test: labelled test images.
        k, t: kNN hyperparameters.
        seed: seeds the random encoder's weights and the few-label choice.
        num_labels_per_class: keep only this many labelled training images per class in the
            memory bank (None = all); the same choice :func:`dcl_teach.train.train` makes.
        feature_dim, norm: architecture of the random encoder (as in ``build_model``).
        device: where to compute.

    Returns:
        ``{"raw_pixels": acc, "random_encoder": acc}``.

    Example:
        >>> from dcl_teach.data import load_dataset
        >>> tr, te = load_dataset("digits"), load_dataset("digits", split="test")
        >>> b = baselines(tr, te)
        >>> 0.5 < b["random_encoder"] < b["raw_pixels"] < 1.0
        True

    Taught in notebook 06.
    """
    bank = memory_bank_indices(train.labels, num_labels_per_class, seed=seed)
    bank_images, bank_labels = train.images[bank], train.labels[bank].to(device)
    test_labels, c = test.labels.to(device), len(train.classes)
    raw = knn_accuracy(
        pixel_features(bank_images.to(device), name=train.name),
        bank_labels,
        pixel_features(test.images.to(device), name=train.name),
        test_labels,
        num_classes=c,
        k=k,
        t=t,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(train.name, feature_dim=feature_dim, norm=norm).to(device)
    rand = knn_accuracy(
        embed(model, bank_images, name=train.name, device=device),
        bank_labels,
        embed(model, test.images, name=train.name, device=device),
        test_labels,
        num_classes=c,
        k=k,
        t=t,
    )
    return {"raw_pixels": raw, "random_encoder": rand}


def memory_bank_indices(
    labels: torch.Tensor, num_labels_per_class: int | None, *, seed: int
) -> torch.Tensor:
    """Indices of the labelled training images kNN may use: all, or a seeded few per class.

    Example:
        >>> memory_bank_indices(torch.tensor([0, 1, 1]), None, seed=0).tolist()
        [0, 1, 2]

    Taught in notebook 06.
    """
    if num_labels_per_class is None:
        return torch.arange(labels.shape[0], device=labels.device)
    generator = torch.Generator().manual_seed(seed)
    return few_label_indices(labels, per_class=num_labels_per_class, generator=generator)
