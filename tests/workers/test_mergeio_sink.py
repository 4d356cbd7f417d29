"""The merge's writer (mergeio._Sink): with O_DIRECT through an aligned block where the filesystem takes it,
buffered where it does not, and the same bytes either way, whatever the sizes of the pieces."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from tuneops.workers import mergeio


def _pieces(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [1, 7, 4095, 4096, 4097, mergeio._DIRECT_BLOCK - 3, 3, mergeio._DIRECT_BLOCK * 2 + 11, 12345, 8]
    return [rng.randbytes(n) for n in sizes]


def _write(path: Path, pieces: list[bytes]) -> mergeio._Sink:
    sink = mergeio._Sink(path)
    try:
        for p in pieces:
            sink.write(memoryview(p))
        sink.finish()
    finally:
        sink.close()
    return sink


def test_direct_writes_give_the_exact_bytes_and_size(tmp_path: Path) -> None:
    pieces = _pieces(1)
    sink = _write(tmp_path / "out", pieces)
    assert sink.direct, "ext4 takes O_DIRECT"
    data = (tmp_path / "out").read_bytes()
    assert len(data) == sink.written == sum(map(len, pieces)), "the padded last block is cut back"
    assert data == b"".join(pieces)


def test_a_filesystem_without_o_direct_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem that refuses O_DIRECT (EINVAL when the flag is set): buffered writes, the same bytes."""
    real = mergeio.fcntl.fcntl

    def refuse_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == mergeio.fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return int(real(fd, cmd, arg))

    monkeypatch.setattr(mergeio.fcntl, "fcntl", refuse_direct)
    pieces = _pieces(2)
    sink = _write(tmp_path / "out", pieces)
    assert not sink.direct
    assert (tmp_path / "out").read_bytes() == b"".join(pieces)


def test_the_environment_turns_direct_writes_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(mergeio.DIRECT_IO_ENV, "0")
    pieces = _pieces(3)
    sink = _write(tmp_path / "out", pieces)
    assert not sink.direct and (tmp_path / "out").read_bytes() == b"".join(pieces)


def test_a_direct_write_refused_midway_goes_on_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL from a filesystem that took O_DIRECT at open but refuses a write: the block is written again,
    buffered, at its place, and so is everything after it."""
    real = mergeio._write_all
    calls = {"n": 0}

    def refuse_second(fd: int, view: memoryview) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view)

    monkeypatch.setattr(mergeio, "_write_all", refuse_second)
    pieces = _pieces(4)
    sink = _write(tmp_path / "out", pieces)
    assert not sink.direct, "switched to buffered writes"
    assert (tmp_path / "out").read_bytes() == b"".join(pieces)


def test_other_write_errors_are_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, view: memoryview) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mergeio, "_write_all", full)
    with pytest.raises(OSError, match="No space left"):
        _write(tmp_path / "out", _pieces(5))
