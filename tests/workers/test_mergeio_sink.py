"""The merge's writer (mergeio._Sink): with O_DIRECT through an aligned block where the filesystem takes it,
buffered where it does not, and the same bytes either way, whatever the sizes of the pieces."""

from __future__ import annotations

import errno
import mmap
import os
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from tuneops.workers import mergeio


def _pieces(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [1, 7, 4095, 4096, 4097, mergeio._DIRECT_BLOCK - 3, 3, mergeio._DIRECT_BLOCK * 2 + 11, 12345, 8]
    return [rng.randbytes(n) for n in sizes]


def _write(path: Path, pieces: Sequence[bytes | memoryview]) -> mergeio._Sink:
    sink = mergeio._Sink(path)
    try:
        for p in pieces:
            sink.write(memoryview(p))
        sink.finish()
    finally:
        sink.close()
    return sink


def _refuse_write(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The nth write the sink makes fails with EINVAL (a filesystem that took O_DIRECT at open refusing it)."""
    real = mergeio._write_all
    calls = {"n": 0}

    def refuse(fd: int, view: memoryview) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd, view)

    monkeypatch.setattr(mergeio, "_write_all", refuse)


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
    _refuse_write(monkeypatch, 2)
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


def _mapped(data: bytes) -> memoryview:
    """A page-aligned, writable buffer holding data (as the merge's pool hands out)."""
    buf = mmap.mmap(-1, max(len(data), 1))
    buf[: len(data)] = data
    return memoryview(buf)[: len(data)]


def _aligned_pieces(seed: int) -> list[memoryview | bytes]:
    """A header that ends on a 4 KiB boundary, then aligned buffers (sent as they are) mixed with pieces that
    are not (copied through the block), as a merge's output file has them."""
    rng = random.Random(seed)
    pieces: list[memoryview | bytes] = [rng.randbytes(mergeio._ALIGN * 2)]
    for n in (mergeio._ALIGN * 3, 16 << 20, 4096 * 5 + 100, mergeio._ALIGN, 77, 8 << 20, 3 * mergeio._ALIGN):
        pieces.append(_mapped(rng.randbytes(n)))
    pieces.append(rng.randbytes(5000))
    return pieces


def test_aligned_buffers_are_written_from_where_they_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page-aligned piece at an aligned file offset goes to the disk from its own buffer (its whole 4 KiB
    blocks; the rest through the block), and the file holds exactly the bytes, whatever the mix."""
    direct: list[int] = []
    real = mergeio._write_all

    def watch(fd: int, view: memoryview) -> None:
        if not isinstance(view.obj, mmap.mmap) or view.obj is not sink_block():
            direct.append(len(view))
        real(fd, view)

    sink_ref: dict[str, mergeio._Sink] = {}

    def sink_block() -> object:
        return sink_ref["sink"].block

    monkeypatch.setattr(mergeio, "_write_all", watch)
    pieces = _aligned_pieces(6)
    sink = mergeio._Sink(tmp_path / "out")
    sink_ref["sink"] = sink
    try:
        for p in pieces:
            sink.write(p if isinstance(p, memoryview) else memoryview(p))
        sink.finish()
    finally:
        sink.close()
    assert sink.direct
    want = b"".join(bytes(p) for p in pieces)
    assert (tmp_path / "out").read_bytes() == want and sink.written == len(want)
    assert direct, "aligned pieces were sent from their own buffers"
    assert all(n % mergeio._ALIGN == 0 for n in direct)
    # up to the piece that leaves the file at an unaligned offset (4096 * 5 + 100): after it, all is copied
    assert sum(direct) == 3 * mergeio._ALIGN + (16 << 20) + 5 * mergeio._ALIGN


def test_a_direct_write_from_a_piece_refused_goes_on_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_write(monkeypatch, 3)
    pieces = _aligned_pieces(7)
    sink = _write(tmp_path / "out", pieces)
    assert not sink.direct
    assert (tmp_path / "out").read_bytes() == b"".join(bytes(p) for p in pieces)


def test_the_output_header_ends_on_a_4k_boundary() -> None:
    t = mergeio.Tensor("w", "BF16", (3, 5), 0, 30)
    header, sizes = mergeio.output_header([t], {"w": mergeio.Step("BF16")})
    assert len(header) % mergeio._ALIGN == 0 and sizes == {"w": 30}
    (n,) = mergeio.struct.unpack("<Q", header[:8])
    assert n == len(header) - 8 and header.rstrip(b" ").endswith(b"}")
