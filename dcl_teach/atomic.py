"""Atomic file writes: a crash or a full disk leaves the old file or the new one, never half.

Every file the package writes that someone relies on later (checkpoints, histories, sweep
results, benchmark reports, downloads, regenerated README regions) goes through
:func:`atomic_output`: the bytes go to a temporary file in the target's folder, are flushed to
disk (``fsync``), and the temporary file is renamed over the target, which POSIX and Windows
both do atomically within one folder. On an error the temporary file is removed and the target
is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """Open a binary stream that replaces ``path`` in one step when the block ends without error.

    Args:
        path: the file to (re)write; its folder is created if missing.
        mode: permission bits of the new file (``tempfile`` would leave 0600).

    Yields:
        A binary file object; write to it as to ``open(path, "wb")``.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a" / "b.txt"
        >>> with atomic_output(target) as f:
        ...     _ = f.write(b"whole")
        >>> target.read_bytes()
        b'whole'
        >>> try:
        ...     with atomic_output(target) as f:
        ...         _ = f.write(b"half")
        ...         raise OSError("disk full")
        ... except OSError:
        ...     pass
        >>> target.read_bytes(), sorted(p.name for p in target.parent.iterdir())
        (b'whole', ['b.txt'])

    Taught in notebook 06.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        tmp.chmod(mode)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (bytes, or text written as UTF-8) to ``path`` atomically.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "r.json"
        >>> atomic_write(target, '{"ok": true}\\n')
        >>> target.read_text()
        '{"ok": true}\\n'

    Taught in notebook 06.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_output(path) as stream:
        stream.write(payload)
