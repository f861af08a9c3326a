"""Datasets as uint8 tensors on the device: scikit-learn digits (bundled) and CIFAR-10 (binary).

Both datasets load once into an :class:`ImageSet` whose ``images`` are ``uint8 (N, C, H, W)``
and whose ``labels`` are ``int64 (N,)``; augmentation (:mod:`dcl_teach.augment`) then works on
whole batches on the device.

- ``"digits"``: the 1,797 real 8x8 handwritten digits that ship with scikit-learn
  (no network). Pixel values 0..16 are scaled to 0..255. The train/test split is a fixed,
  seeded, stratified split: 360 test images (35 to 37 per class, proportional to class size)
  and 1,437 training images, identical on every machine (see :func:`digits_split`).
- ``"cifar10"``: the official *binary* CIFAR-10 archive (162 MiB), downloaded once into
  :func:`data_dir`, checked against its md5, extracted safely and parsed with numpy (no pickle).

Where the data live: the ``root`` argument, else the environment variable ``DCL_TEACH_DATA``,
else ``~/.cache/dcl_teach``. Without network, put ``cifar-10-binary.tar.gz`` into that folder
and the loader verifies and extracts it.

Taught in notebook 06.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from dcl_teach.atomic import atomic_output

DATASETS = ("digits", "cifar10")
SPLITS = ("train", "test")

DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_TEST_SIZE = 360  # images held out for testing; 1,797 - 360 = 1,437 for training
DIGITS_SPLIT_SEED = 0  # seed of the fixed stratified split (numpy PCG64, stable across versions)

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"  # file name of the archive inside data_dir()
CIFAR10_DIR = "cifar-10-batches-bin"  # folder the archive extracts to
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_META = "batches.meta.txt"
CIFAR10_RECORD = 1 + 3 * 32 * 32  # one label byte, then the R, G and B planes of 32x32 pixels
CIFAR10_RECORDS_PER_BATCH = 10_000

# Channel mean and standard deviation of the *training* images, on the 0..1 scale.
# digits: computed from the 1,437 training images of digits_split() (tests recompute them).
# cifar10: the per-pixel statistics of the 50,000 training images (std 0.247, not the 0.2023
# that circulates in many repositories, which is the std of per-image means).
_MEAN_STD = {
    "digits": ((0.3056,), (0.376,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """Folder where datasets are stored.

    Args:
        root: explicit folder; wins over everything else.

    Returns:
        ``root`` if given, else ``$DCL_TEACH_DATA`` if set and non-empty, else
        ``~/.cache/dcl_teach``. The folder is not created here.

    Example:
        >>> str(data_dir("/tmp/somewhere"))
        '/tmp/somewhere'
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("DCL_TEACH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dcl_teach"


@dataclass(frozen=True)
class ImageSet:
    """A labelled image dataset held as tensors.

    Attributes:
        images: ``uint8 (N, C, H, W)`` pixel values 0..255.
        labels: ``int64 (N,)`` class indices into ``classes``.
        classes: class names, index = label.
        name: dataset name, e.g. ``"digits"`` or ``"cifar10"``.

    Example:
        >>> s = ImageSet(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]),
        ...              ("a", "b"), "toy")
        >>> len(s), s.to("cpu").images.shape
        (2, torch.Size([2, 1, 8, 8]))
    """

    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W); got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int64 ({self.images.shape[0]},); got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: str | torch.device) -> ImageSet:
        """The same dataset with images and labels on ``device``."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.classes, self.name)


def mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a dataset's training images on the 0..1 scale.

    Args:
        name: ``"digits"`` or ``"cifar10"``.

    Returns:
        ``(mean, std)``, each a tuple with one float per channel.

    Raises:
        ValueError: unknown dataset name.

    Example:
        >>> mean_std("digits")
        ((0.3056,), (0.376,))
    """
    _check_choice("dataset name", name, DATASETS)
    return _MEAN_STD[name]


def standardize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Subtract a per-channel mean and divide by a per-channel std: ``(x - mean) / std``.

    The one place where images are standardised: training views (:mod:`dcl_teach.augment`),
    evaluation (:func:`dcl_teach.evaluate.normalize_images`) and the per-sample benchmark.

    Args:
        x: float images ``(B, C, H, W)`` on the 0..1 scale.
        mean: one value per channel (see :func:`mean_std`).
        std: one value per channel, all > 0.

    Returns:
        Float ``(B, C, H, W)``, same dtype and device as ``x``.

    Example:
        >>> standardize(torch.ones(1, 1, 2, 2), (0.5,), (0.25,)).flatten().tolist()
        [2.0, 2.0, 2.0, 2.0]
    """
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)  # (1, C, 1, 1)
    return (x - mean_t) / std_t  # (B, C, H, W)


def load_dataset(
    name: str = "digits",
    *,
    split: str = "train",
    root: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    download: bool = True,
    url: str = CIFAR10_URL,
    md5: str = CIFAR10_MD5,
    records_per_batch: int = CIFAR10_RECORDS_PER_BATCH,
) -> ImageSet:
    """Load a dataset split once as uint8 tensors on ``device``.

    Args:
        name: ``"digits"`` (bundled with scikit-learn) or ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        root: data folder, see :func:`data_dir` (CIFAR-10 only; digits need none).
        device: where the tensors go.
        download: CIFAR-10 only: download the archive if it is not in the data folder.
        url: CIFAR-10 archive address (tests pass a ``file://`` URL).
        md5: expected md5 of the archive.
        records_per_batch: expected images per ``.bin`` file (10,000 for the real data).

    Returns:
        An :class:`ImageSet`: digits ``(1437 | 360, 1, 8, 8)``, CIFAR-10
        ``(50000 | 10000, 3, 32, 32)``.

    Raises:
        ValueError: unknown name or split.
        FileNotFoundError: CIFAR-10 is missing and ``download=False``.
        RuntimeError: no network, checksum mismatch or corrupt files (the message says what
            to delete or where to put the archive by hand).

    Example:
        >>> ds = load_dataset("digits", split="test")
        >>> ds.images.shape, ds.images.dtype, len(ds.classes)
        (torch.Size([360, 1, 8, 8]), torch.uint8, 10)
    """
    _check_choice("dataset name", name, DATASETS)
    _check_choice("split", split, SPLITS)
    if name == "digits":
        images, labels, classes = _load_digits(split)
    else:
        folder = _prepare_cifar10(data_dir(root), download=download, url=url, md5=md5)
        images, labels, classes = _read_cifar10(folder, split, records_per_batch)
    return ImageSet(
        torch.from_numpy(images).to(device),
        torch.from_numpy(labels).to(device),
        classes,
        name,
    )


def _check_choice(what: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(valid)}")


# ------------------------------------------------------------------------------- digits


def digits_split(labels: np.ndarray) -> np.ndarray:
    """Boolean test mask of the fixed stratified digits split.

    Each class gets a share of the ``DIGITS_TEST_SIZE`` test images proportional to its size
    (largest-remainder rounding, ties to the lower class), and within a class the test images
    are the first ones of a permutation drawn with ``numpy.random.default_rng(DIGITS_SPLIT_SEED)``.

    Args:
        labels: ``(N,)`` integer class labels.

    Returns:
        ``(N,)`` bool, True for test images.

    Example:
        >>> mask = digits_split(np.repeat(np.arange(3), 10))
        >>> int(mask.sum()) == round(30 * DIGITS_TEST_SIZE / 1797)
        True
    """
    n = labels.shape[0]
    classes, counts = np.unique(labels, return_counts=True)
    n_test = round(n * DIGITS_TEST_SIZE / 1797)  # 360 for the real data
    exact = counts * n_test / n  # (K,)
    quota = np.floor(exact).astype(int)  # (K,)
    order = np.argsort(-(exact - quota), kind="stable")  # largest remainders first
    quota[order[: n_test - quota.sum()]] += 1
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    mask = np.zeros(n, dtype=bool)  # (N,)
    for c, q in zip(classes, quota, strict=True):
        members = np.flatnonzero(labels == c)
        mask[rng.permutation(members)[:q]] = True
    return mask


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    y = np.asarray(bunch.target, dtype=np.int64)  # (1797,)
    pixels = np.round(x * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    test = digits_split(y)
    keep = test if split == "test" else ~test
    return np.ascontiguousarray(pixels[keep]), y[keep], DIGITS_CLASSES


# ------------------------------------------------------------------------------ CIFAR-10


def _manual_help(folder: Path, url: str) -> str:
    return (
        f"Download {url} on a machine with internet access and copy it to "
        f"{folder / CIFAR10_ARCHIVE} (or pass root=... / set DCL_TEACH_DATA to another "
        "folder); it is verified and extracted on the next load."
    )


def _prepare_cifar10(folder: Path, *, download: bool, url: str, md5: str) -> Path:
    """Make sure ``folder/cifar-10-batches-bin`` exists; return it.

    The extracted folder only ever appears through an atomic rename of a fully extracted
    temporary folder, and the archive only through a rename of a fully downloaded and
    md5-verified temporary file, so an interrupted run never leaves data that look complete.
    """
    target = folder / CIFAR10_DIR
    if target.is_dir():
        return target
    archive = folder / CIFAR10_ARCHIVE
    if not archive.is_file():
        if not download:
            raise FileNotFoundError(
                f"CIFAR-10 is not in {folder} and download=False. " + _manual_help(folder, url)
            )
        folder.mkdir(parents=True, exist_ok=True)
        _download(url, archive, md5=md5)
    else:
        digest = _md5(archive)
        if digest != md5:
            raise RuntimeError(
                f"{archive} has md5 {digest}, expected {md5}: the file is corrupt or incomplete. "
                f"Delete it and run again to re-download. " + _manual_help(folder, url)
            )
    _extract(archive, folder)
    return target


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(url: str, archive: Path, *, md5: str) -> None:
    """Stream ``url`` into a temporary file beside ``archive``, check md5, rename into place."""
    from tqdm.auto import tqdm

    digest = hashlib.md5()
    with atomic_output(archive) as out:  # the archive appears whole and verified, or not at all
        try:
            response = urllib.request.urlopen(url, timeout=60)
        except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
            raise RuntimeError(
                f"Could not download CIFAR-10 from {url} ({e}): there seems to be no "
                "network. " + _manual_help(archive.parent, url)
            ) from e
        with response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=archive.name) as bar:
                try:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
                except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
                    raise RuntimeError(
                        f"The download of {url} broke off ({e}). Run again, or "
                        + _manual_help(archive.parent, url)
                    ) from e
        if digest.hexdigest() != md5:
            raise RuntimeError(
                f"The file downloaded from {url} has md5 {digest.hexdigest()}, expected {md5}; "
                "it was discarded. Run again, or " + _manual_help(archive.parent, url)
            )


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or name.startswith(("/", "\\")):
        raise RuntimeError(f"refusing to extract unsafe archive member {name!r}")
    return path


def _extract(archive: Path, folder: Path) -> None:
    """Extract the regular files under ``cifar-10-batches-bin/`` into a temporary folder,
    check them, then rename the folder into place (atomic on one file system)."""
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                path = _safe_member_path(member.name)
                if member.isdir():
                    continue
                if not member.isfile():  # links, devices, fifos: never in the real archive
                    raise RuntimeError(f"refusing to extract non-file member {member.name!r}")
                if path.parts[0] != CIFAR10_DIR:
                    continue
                dest = tmp.joinpath(*path.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                with src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
        extracted = tmp / CIFAR10_DIR
        missing = [
            f
            for f in (*CIFAR10_TRAIN_FILES, *CIFAR10_TEST_FILES, CIFAR10_META)
            if not (extracted / f).is_file()
        ]
        if missing:
            raise RuntimeError(
                f"{archive} lacks {', '.join(missing)}: it is not the CIFAR-10 binary archive. "
                "Delete it and run again to re-download."
            )
        try:
            os.replace(extracted, folder / CIFAR10_DIR)
        except OSError:
            # Another process (e.g. a second rank of a distributed run) finished first.
            if not (folder / CIFAR10_DIR).is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cifar10(
    folder: Path, split: str, records_per_batch: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    files = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    expected = records_per_batch * CIFAR10_RECORD
    fix = f"Delete {folder} (and {folder.parent / CIFAR10_ARCHIVE}) and run again to re-download."
    chunks = []
    for fname in files:
        path = folder / fname
        if not path.is_file():
            raise RuntimeError(f"CIFAR-10 file {path} is missing: the data are incomplete. {fix}")
        size = path.stat().st_size
        if size % CIFAR10_RECORD or size != expected:
            raise RuntimeError(
                f"CIFAR-10 file {path} has {size} bytes; expected {records_per_batch} records "
                f"of {CIFAR10_RECORD} bytes ({expected} bytes): the data are corrupt. {fix}"
            )
        chunks.append(np.fromfile(path, dtype=np.uint8).reshape(-1, CIFAR10_RECORD))
    records = np.concatenate(chunks)  # (N, 3073)
    labels = records[:, 0].astype(np.int64)  # (N,)
    if labels.max() > 9:
        raise RuntimeError(f"CIFAR-10 labels above 9 in {folder}: the data are corrupt. {fix}")
    images = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32))  # (N, 3, 32, 32)
    meta = folder / CIFAR10_META
    classes = tuple(line.strip() for line in meta.read_text().splitlines() if line.strip())
    if len(classes) != 10:
        raise RuntimeError(f"{meta} lists {len(classes)} classes, expected 10. {fix}")
    return images, labels, classes


CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
