"""Tests for dcl_teach.atomic: a write is whole or absent, even when it fails half-way."""

from __future__ import annotations

import os
import stat

import pytest

from dcl_teach.atomic import atomic_output, atomic_write


def test_text_and_bytes_replace_the_target(tmp_path):
    target = tmp_path / "deep" / "r.txt"
    atomic_write(target, "first")
    atomic_write(target, b"second \xc3\xa9")
    assert target.read_text(encoding="utf-8") == "second é"
    assert [p.name for p in target.parent.iterdir()] == ["r.txt"]


def test_a_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "r.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError, match="broke off"):
        with atomic_output(target) as f:
            f.write(b"half of the ne")
            raise RuntimeError("broke off")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_no_file_appears_when_the_first_write_fails(tmp_path):
    target = tmp_path / "never.bin"
    with pytest.raises(ValueError):
        with atomic_output(target):
            raise ValueError("md5 mismatch")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_new_files_are_readable_by_others(tmp_path):
    target = tmp_path / "archive.tar.gz"
    atomic_write(target, b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
