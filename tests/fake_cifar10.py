"""A CIFAR-10 archive in the exact binary format, for the download and loading tests.

CIFAR-10 cannot be downloaded where the tests run; these archives exercise the real code path
(``dcl_teach.data.load_dataset`` with a ``file://`` URL and its md5) byte for byte. The GPU
check (``python -m dcl_teach.gpu_check``) writes one at the real size to time a real epoch.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np

from dcl_teach.data import (
    CIFAR10_ARCHIVE,
    CIFAR10_CLASSES,
    CIFAR10_DIR,
    CIFAR10_META,
    CIFAR10_RECORD,
    CIFAR10_TEST_FILES,
    CIFAR10_TRAIN_FILES,
)


def write_fake_cifar10(
    path: str | os.PathLike, *, records_per_batch: int = 20, seed: int = 0
) -> Path:
    """Write an archive in the exact CIFAR-10 binary format, with random pixels.

    Same member names and record layout as the official archive (label byte, then R, G, B
    planes of 32x32), random pixels, labels cycling through the 10 classes in a shuffled order.
    The bytes are deterministic for a given seed (fixed gzip and tar timestamps), so the md5 is
    too.

    Args:
        path: archive file to write, or an existing folder to write ``cifar-10-binary.tar.gz``
            into.
        records_per_batch: images per ``.bin`` file.
        seed: numpy seed of pixels and labels.

    Returns:
        The path of the written archive.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = write_fake_cifar10(d, records_per_batch=3)
        ...     p.name, p.stat().st_size > 0
        ('cifar-10-binary.tar.gz', True)
    """
    if records_per_batch < 1:
        raise ValueError(f"records_per_batch must be >= 1; got {records_per_batch}")
    path = Path(path)
    if path.is_dir():
        path = path / CIFAR10_ARCHIVE
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    for fname in (*CIFAR10_TRAIN_FILES, *CIFAR10_TEST_FILES):
        labels = rng.permutation(np.arange(records_per_batch) % 10).astype(np.uint8)  # (R,)
        pixels = rng.integers(0, 256, size=(records_per_batch, CIFAR10_RECORD - 1), dtype=np.uint8)
        members[fname] = np.concatenate([labels[:, None], pixels], axis=1).tobytes()  # (R, 3073)
    members[CIFAR10_META] = ("\n".join(CIFAR10_CLASSES) + "\n\n").encode()
    with open(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            folder = tarfile.TarInfo(CIFAR10_DIR)
            folder.type, folder.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(folder)
            for fname, payload in members.items():
                info = tarfile.TarInfo(f"{CIFAR10_DIR}/{fname}")
                info.size, info.mode = len(payload), 0o644
                tar.addfile(info, io.BytesIO(payload))
    return path
