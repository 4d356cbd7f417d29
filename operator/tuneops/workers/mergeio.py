"""The streaming merge's I/O: every byte read once and written once, its sha256 taken in that same pass.

One safetensors file is rewritten by four stages on their own threads, so that reading, merging, hashing and
writing overlap (hashlib, file I/O and torch all release the GIL):

- the reader reads the input file front to back (header, tensors, any gaps) and, unless a manifest already
  vouches for the input, hashes every byte it reads: that hash is the input file's sha256, of the very bytes
  the merge used. It reads with read(2), not a mapping: a file cut short while it is read is an error with a
  message, not a SIGBUS;
- the caller's thread turns each piece into output bytes: tensors nothing changes pass through as bytes (no
  decode, no encode); the others go through a Step, a whole row range at a time;
- the hasher hashes the output bytes in order, and the writer writes them (with O_DIRECT where the filesystem
  takes it, see _Sink; else buffered, starting their writeback early) and syncs the file at the end.

Memory is bounded by a byte budget shared by the stages (6 pieces of CHUNK bytes; a piece is larger only
when MIN_ROWS rows of one tensor are), not by the file or the model. A whole-tensor Step (an embedding delta,
a replaced module) holds that one tensor and its result.

Inputs are checked the way storage.fetch checks them, with the hashing moved into the pass (see Input), and
the output's manifest is made from the hashes the writer took (commit_hashed), so no file is read twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import math
import mmap
import os
import queue
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops import storage
from tuneops.storage import integrity
from tuneops.storage.artifacts import check_input
from tuneops.storage.integrity import HASH_INPUTS_ENV
from tuneops.storage.manifest import (
    MANIFEST_NAME,
    Manifest,
    files_digest,
    list_files,
    read_manifest,
    sha256_file,
)
from tuneops.storage.safety import check_tree, inside, open_regular
from tuneops.storage.uri import ArtifactURI, InputError, parse_uri, pvc_root
from tuneops.workers.common import InvalidInput

log = logging.getLogger("tuneops.workers.mergeio")

CHUNK = 16 << 20  # bytes per piece read, merged and written
# A row piece of a merged tensor has at least this many rows (or is the whole tensor): BLAS takes other code
# paths for very few rows (gemv for one), whose sums may round differently from peft's one matmul.
MIN_ROWS = 128
_IO = 8 << 20  # bytes per read/write system call
# start writing back every this many bytes (sync_file_range), so that the final sync has little left to do
_WRITEBACK = 64 << 20
_HEADER_MAX = 100 << 20
_ALIGN = 4096  # O_DIRECT's alignment of memory, offsets and lengths: the largest logical block size in use

ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


@dataclass(frozen=True)
class FileDigest:
    sha256: str
    size: int


# path relative to its folder (posix) -> sha256 and size of the bytes read or written in the pass
Ledger = dict[str, FileDigest]


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets in the data section
    end: int

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return (self.end - self.begin) // self.rows if self.rows else 0


@dataclass(frozen=True)
class Step:
    """What becomes of one tensor. fn=None: its bytes are copied as they are (dtype must be unchanged).
    Otherwise fn(data, row0, row1) gets the input bytes of rows [row0, row1) (a writable buffer it may change
    in place) and returns an object with the buffer protocol holding exactly the output bytes of those rows;
    whole=True: it is called once, with every row."""

    dtype: str
    fn: Callable[[memoryview, int, int], Any] | None = None
    whole: bool = False


def parse_header(raw: bytes, data_size: int, where: str) -> list[Tensor]:
    """The tensors of a safetensors header in file order, their offsets checked against the data size."""
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise InvalidInput(f"{where}: safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidInput(f"{where}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = []
    for name, info in header.items():
        try:
            dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(f"{where}: tensor {name} has a malformed header entry") from None
        if dtype not in ITEMSIZE:
            raise InvalidInput(f"{where}: tensor {name} has dtype {dtype}, which the merge does not read")
        if not 0 <= begin <= end <= data_size or end - begin != math.prod(shape) * ITEMSIZE[dtype]:
            raise InvalidInput(f"{where}: tensor {name} has offsets that do not fit its shape or the file")
        tensors.append(Tensor(name, dtype, shape, begin, end))
    tensors.sort(key=lambda t: (t.begin, t.end))
    for a, b in itertools.pairwise(tensors):
        if b.begin < a.end:
            raise InvalidInput(f"{where}: tensors {a.name} and {b.name} overlap")
    return tensors


def output_header(tensors: list[Tensor], steps: dict[str, Step]) -> tuple[bytes, dict[str, int]]:
    """The output header (same names and shapes, in the same order, packed) and each tensor's output size."""
    out: dict[str, Any] = {}
    sizes: dict[str, int] = {}
    offset = 0
    for t in tensors:
        code = steps[t.name].dtype
        n = math.prod(t.shape) * ITEMSIZE[code]
        out[t.name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        sizes[t.name] = n
        offset += n
    out["__metadata__"] = {"format": "pt"}
    raw = json.dumps(out, separators=(",", ":")).encode()
    # padded with spaces (as the format allows) so that the data section starts on a 4 KiB boundary: pieces
    # then land at aligned offsets, and the writer sends them to the disk from their own buffers (_Sink)
    raw += b" " * (-(8 + len(raw)) % _ALIGN)
    return struct.pack("<Q", len(raw)) + raw, sizes


def _pieces(t: Tensor, step: Step) -> Iterator[tuple[int, int, int, int]]:
    """(byte begin, byte end, row0, row1) of the pieces a tensor is read in, in order."""
    if step.fn is None or t.row_bytes == 0:
        for b in range(t.begin, t.end, CHUNK):
            yield b, min(b + CHUNK, t.end), 0, 0
        return
    if step.whole:
        yield t.begin, t.end, 0, t.rows
        return
    for r0, r1 in row_blocks(t.rows, CHUNK // t.row_bytes):
        yield t.begin + r0 * t.row_bytes, t.begin + r1 * t.row_bytes, r0, r1


def row_blocks(rows: int, per: int, least: int = MIN_ROWS) -> Iterator[tuple[int, int]]:
    """[row0, row1) blocks of about `per` rows covering `rows`, none shorter than `least` (a short last
    block joins the one before) unless it is the only one."""
    per = max(least, per)
    bounds = [*range(0, rows, per), rows]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < least:
        del bounds[-2]
    yield from itertools.pairwise(bounds)


class _Aborted(Exception):
    pass


class _Budget:
    """Bytes in flight between the stages; acquire blocks until they fit (one oversized piece always fits)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.aborted = limit, 0, False
        self.cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            while self.used and self.used + n > self.limit and not self.aborted:
                self.cond.wait()
            if self.aborted:
                raise _Aborted
            self.used += n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()


class _Pool:
    """Reused buffers of one size (fresh allocations cost a page fault per 4 KiB): taken under the budget.
    They are anonymous mappings, so page-aligned: the writer can send them to an O_DIRECT file as they are."""

    def __init__(self, size: int, budget: _Budget) -> None:
        self.size, self.budget = size, budget
        self.free: list[mmap.mmap] = []
        self.lock = threading.Lock()

    def take(self, n: int) -> mmap.mmap:
        size = max(n, self.size)
        self.budget.acquire(size)
        with self.lock:
            if n <= self.size and self.free:
                return self.free.pop()
        return mmap.mmap(-1, size)

    def give(self, buf: mmap.mmap) -> None:
        if len(buf) == self.size:
            with self.lock:
                self.free.append(buf)
        self.budget.release(len(buf))


def _sync_file_range() -> Callable[[int, int, int], None]:
    """Starts writeback of a byte range without waiting (Linux sync_file_range); a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    fn = getattr(ctypes.CDLL(name, use_errno=True), "sync_file_range", None) if name else None
    if fn is None:
        return lambda fd, off, n: None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start(fd: int, off: int, n: int) -> None:
        fn(fd, off, n, write)

    return start


_START_WRITEBACK = _sync_file_range()


def _page_aligned(view: memoryview) -> bool:
    """Whether a writable buffer starts on a 4 KiB boundary (read-only ones are not sent directly)."""
    if view.readonly or not view.c_contiguous or not len(view):
        return False
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view)) % _ALIGN == 0
    except (TypeError, ValueError):
        return False


def _read_into(fd: int, view: memoryview, where: str) -> None:
    done = 0
    while done < len(view):
        got = os.readv(fd, [view[done : done + _IO]])
        if got == 0:
            raise InvalidInput(f"{where}: truncated safetensors file")
        done += got


def _write_all(fd: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += os.write(fd, view[done : done + _IO])


_DIRECT_BLOCK = 8 << 20
# `0`: never write the output with O_DIRECT
DIRECT_IO_ENV = "TUNEOPS_MERGE_DIRECT_IO"


class _Sink:
    """Writes one new file front to back, then syncs it.

    Where the filesystem takes it, with O_DIRECT through one aligned block: the bytes go from that block to the
    device, with no copy into the page cache and no writeback left to do. A buffered write costs about as much
    CPU as the merge's arithmetic (1 s per GB on the 2-core machine of the benchmark), and the merge is bound by
    CPU. Elsewhere (tmpfs, a filesystem that refuses O_DIRECT, a write it refuses), buffered writes, with
    writeback started every _WRITEBACK bytes so that the final sync has little left to do."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.written = self.flushed = self.pos = 0
        self.offset = 0  # where the block's bytes go in the file
        self.direct = False
        self.block: mmap.mmap | None = None
        if os.environ.get(DIRECT_IO_ENV, "").strip() != "0" and hasattr(os, "O_DIRECT"):
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_DIRECT)
                self.block = mmap.mmap(-1, _DIRECT_BLOCK)  # page-aligned
                self.direct = True

    def write(self, data: memoryview) -> None:
        if self.direct and self.block is not None and self.pos % _ALIGN == 0 and _page_aligned(data):
            # straight from the caller's buffer: its whole 4 KiB blocks, after what the block holds
            k = len(data) - len(data) % _ALIGN
            if k:
                if self.pos:
                    self._flush_block(self.pos)
                self._put(data[:k])
                self.written += k
                data = data[k:]
        if not self.direct or self.block is None:
            if self.pos:  # what the block holds from before a refused direct write goes first
                self._flush_block(self.pos)
            _write_all(self.fd, data)
            self.written += len(data)
            if self.written - self.flushed >= _WRITEBACK:
                _START_WRITEBACK(self.fd, self.flushed, self.written - self.flushed)
                self.flushed = self.written
            return
        done = 0
        while done < len(data):
            k = min(len(data) - done, _DIRECT_BLOCK - self.pos)
            self.block[self.pos : self.pos + k] = data[done : done + k]
            self.pos += k
            done += k
            if self.pos == _DIRECT_BLOCK:
                self._flush_block(_DIRECT_BLOCK)
        self.written += len(data)

    def _put(self, view: memoryview) -> None:
        """Writes view at self.offset: directly while the file takes it, else buffered from here on."""
        if self.direct:
            try:
                _write_all(self.fd, view)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # refused after all (alignment this filesystem wants otherwise): buffered from here on
                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self.direct = False
                os.lseek(self.fd, self.offset, os.SEEK_SET)
                _write_all(self.fd, view)
        else:
            _write_all(self.fd, view)
        self.offset += len(view)

    def _flush_block(self, n: int) -> None:
        assert self.block is not None
        view = memoryview(self.block)[:n]
        try:
            self._put(view)
        finally:
            view.release()
        self.pos = 0

    def finish(self) -> None:
        """Writes what is left and syncs the file (its size too)."""
        if self.block is not None and self.pos:
            tail = self.pos
            if self.direct:  # the last block is padded to the alignment, and the file cut back to its size
                padded = -(-tail // _ALIGN) * _ALIGN
                self.block[tail:padded] = bytes(padded - tail)
                self._flush_block(padded)
                os.ftruncate(self.fd, self.written)
            else:
                self._flush_block(tail)
        os.fdatasync(self.fd)

    def close(self) -> None:
        os.close(self.fd)
        if self.block is not None:
            self.block.close()


@dataclass
class _Piece:
    tensor: Tensor | None  # None: the output header
    buf: Any  # a buffer from the pool (an anonymous mapping, page-aligned), or bytes
    n: int
    row0: int = 0
    row1: int = 0
    pooled: bool = True


_END = object()


@dataclass
class _Shared:
    budget: _Budget
    pool: _Pool
    errors: list[BaseException] = field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.budget.abort()


@dataclass(frozen=True)
class Rewritten:
    input: FileDigest | None  # of the bytes read, taken as they were read (None: not hashed)
    output: FileDigest  # of the bytes written, taken as they were written
    names: list[str]  # tensors in file order
    data_bytes: int  # the output's tensor bytes (the index's total_size counts these)
    seconds: dict[str, float]  # where each stage spent its time (the profile the merge logs)


def rewrite_safetensors(
    src: Path,
    dst: Path,
    plan: Callable[[Tensor], Step],
    *,
    budget_bytes: int = 6 * CHUNK,
    hash_input: bool = True,
) -> Rewritten:
    """Rewrites one safetensors file through `plan` (tensor -> Step, called once per tensor, in file order);
    the output is synced to disk before this returns. Without hash_input the input is read but not hashed
    (its Rewritten.input is None): for an input whose manifest already vouches for it."""
    budget = _Budget(budget_bytes)
    shared = _Shared(budget, _Pool(CHUNK, budget))
    to_merge: queue.SimpleQueue[Any] = queue.SimpleQueue()
    to_write: queue.SimpleQueue[Any] = queue.SimpleQueue()
    to_disk: queue.SimpleQueue[Any] = queue.SimpleQueue()
    got: dict[str, Any] = {}
    where = str(src)
    clock = dict.fromkeys(
        (
            "read",
            "hash_in",
            "wait_in",
            "merge",
            "wait_merge",
            "hash_out",
            "write",
            "sync",
            "total",
            "cpu_reader",
            "cpu_merge",
            "cpu_hasher",
            "cpu_writer",
        ),
        0.0,
    )
    started = time.perf_counter()

    def reader() -> None:
        cpu = time.thread_time()
        try:
            h: Any = hashlib.sha256() if hash_input else _NoHash()
            fd = open_regular(src)
            try:
                size = os.fstat(fd).st_size
                first = os.read(fd, 8)
                if len(first) != 8:
                    raise InvalidInput(f"{where} is not a safetensors file")
                (n,) = struct.unpack("<Q", first)
                if n > _HEADER_MAX or 8 + n > size:
                    raise InvalidInput(f"{where}: safetensors header of {n} bytes is implausible")
                raw = bytearray(n)
                _read_into(fd, memoryview(raw), where)
                h.update(first)
                h.update(raw)
                tensors = parse_header(bytes(raw), size - 8 - n, where)
                steps = {t.name: plan(t) for t in tensors}
                header, sizes = output_header(tensors, steps)
                got["tensors"], got["steps"], got["sizes"] = tensors, steps, sizes
                got["header_len"] = len(header)
                to_merge.put(_Piece(None, header, len(header), pooled=False))
                pos, total = 0, 8 + n
                for t in tensors:
                    if t.begin > pos:
                        total += _skip(fd, h, t.begin - pos, where)
                    step = steps[t.name]
                    for b, e, r0, r1 in _pieces(t, step):
                        t0 = time.perf_counter()
                        buf = shared.pool.take(e - b)
                        view = memoryview(buf)[: e - b]
                        t1 = time.perf_counter()
                        _read_into(fd, view, where)
                        t2 = time.perf_counter()
                        h.update(view)
                        t3 = time.perf_counter()
                        clock["wait_in"] += t1 - t0
                        clock["read"] += t2 - t1
                        clock["hash_in"] += t3 - t2
                        to_merge.put(_Piece(t, buf, e - b, r0, r1))
                    pos, total = t.end, total + t.end - t.begin
                while chunk := os.read(fd, _IO):  # anything after the last tensor is part of the file too
                    h.update(chunk)
                    total += len(chunk)
            finally:
                os.close(fd)
            got["input"] = FileDigest(h.hexdigest(), total) if hash_input else None
        except BaseException as exc:
            shared.fail(exc)
        finally:
            to_merge.put(_END)
            clock["cpu_reader"] += time.thread_time() - cpu

    def hasher() -> None:
        cpu = time.thread_time()
        try:
            h = hashlib.sha256()
            while (piece := to_write.get()) is not _END:
                if not shared.errors:
                    t0 = time.perf_counter()
                    h.update(memoryview(piece.buf).cast("B")[: piece.n])
                    clock["hash_out"] += time.perf_counter() - t0
                to_disk.put(piece)
            got["output_sha256"] = h.hexdigest()
        except BaseException as exc:
            shared.fail(exc)
            while to_write.get() is not _END:  # let the merging stage finish
                pass
        finally:
            to_disk.put(_END)
            clock["cpu_hasher"] += time.thread_time() - cpu

    def writer() -> None:
        cpu = time.thread_time()
        ended = False
        try:
            sink = _Sink(dst)
            try:
                while (piece := to_disk.get()) is not _END:
                    if not shared.errors:
                        t0 = time.perf_counter()
                        sink.write(memoryview(piece.buf).cast("B")[: piece.n])
                        clock["write"] += time.perf_counter() - t0
                    _release(shared, piece)
                ended = True
                if shared.errors:
                    return
                t0 = time.perf_counter()
                sink.finish()
                clock["sync"] += time.perf_counter() - t0
            finally:
                sink.close()
            got["output_size"] = sink.written
            got["direct"] = sink.direct
        except BaseException as exc:
            shared.fail(exc)
            while not ended and to_disk.get() is not _END:  # let the other stages finish
                pass
        finally:
            clock["cpu_writer"] += time.thread_time() - cpu

    stages = (reader, hasher, writer)
    threads = [threading.Thread(target=f, name=f"merge-{f.__name__}", daemon=True) for f in stages]
    for th in threads:
        th.start()
    cpu = time.thread_time()
    try:
        t0 = time.perf_counter()
        while (piece := to_merge.get()) is not _END:
            t1 = time.perf_counter()
            clock["wait_merge"] += t1 - t0
            if shared.errors:
                _release(shared, piece)
                continue
            try:
                to_write.put(_merge_piece(piece, got, shared))
            except BaseException as exc:
                shared.fail(exc)
            t0 = time.perf_counter()
            clock["merge"] += t0 - t1
    except BaseException as exc:
        shared.fail(exc)  # stops the reader (its next budget wait raises)
        raise
    finally:
        to_write.put(_END)
        for th in threads:
            th.join()
    if shared.errors:
        raise shared.errors[0]
    out = FileDigest(got["output_sha256"], got["output_size"])
    if out.size != got["header_len"] + sum(got["sizes"].values()):
        raise RuntimeError(f"{dst}: written size does not match its header")
    clock["total"] = time.perf_counter() - started
    clock["cpu_merge"] += time.thread_time() - cpu  # torch threads beyond this one not counted
    return Rewritten(got["input"], out, [t.name for t in got["tensors"]], sum(got["sizes"].values()), clock)


class _NoHash:
    def update(self, data: Any) -> None:
        pass


def _skip(fd: int, h: Any, n: int, where: str) -> int:
    """Reads and hashes n bytes the header points nowhere into (padding between tensors)."""
    left = n
    while left:
        chunk = os.read(fd, min(left, _IO))
        if not chunk:
            raise InvalidInput(f"{where}: truncated safetensors file")
        h.update(chunk)
        left -= len(chunk)
    return n


def _release(shared: _Shared, piece: _Piece) -> None:
    if piece.pooled:
        shared.pool.give(piece.buf)


def _merge_piece(piece: _Piece, got: dict[str, Any], shared: _Shared) -> _Piece:
    """One piece through its Step: bytes unchanged, or the Step's output (the input buffer then goes back)."""
    t = piece.tensor
    if t is None:
        return piece
    step: Step = got["steps"][t.name]
    if step.fn is None:
        return piece
    out = step.fn(memoryview(piece.buf)[: piece.n], piece.row0, piece.row1)
    n = (piece.row1 - piece.row0) * (got["sizes"][t.name] // t.rows) if t.rows else got["sizes"][t.name]
    if memoryview(out).cast("B").nbytes != n:
        raise RuntimeError(f"{t.name}: the merge produced fewer bytes than its shape needs")
    same = isinstance(out, memoryview) and out.obj is piece.buf
    if not same:
        _release(shared, piece)
    return _Piece(t, piece.buf if same else out, n, pooled=same)


def copy_hashed(src: Path, dst: Path) -> FileDigest:
    """Copies one file, hashing the bytes as they pass (the copy's sha256 is the source's)."""
    h = hashlib.sha256()
    size = 0
    fin = open_regular(src)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            while chunk := os.read(fin, _IO):
                h.update(chunk)
                _write_all(fout, memoryview(chunk))
                size += len(chunk)
        finally:
            os.close(fout)
        shutil.copystat(src, dst, follow_symlinks=False)
    finally:
        os.close(fin)
    return FileDigest(h.hexdigest(), size)


def write_hashed(path: Path, data: bytes) -> FileDigest:
    path.write_bytes(data)
    return FileDigest(hashlib.sha256(data).hexdigest(), len(data))


def _short(digest: str) -> str:
    return digest[:23] + "..." if len(digest) > 26 else digest


class Input:
    """A model folder to be read once, its files hashed in that read (fetch's checks, the hashing deferred).

    Before the pass, what costs no hashing is checked: no link or special file in the folder, and when it has a
    manifest, that the manifest is self-consistent, is the expected digest ($TUNEOPS_EXPECT_DIGESTS) and lists
    exactly the files there with their sizes. Its digest is then the manifest's, known before any byte is read,
    and its bytes are not hashed again (`hash_needed`; $TUNEOPS_HASH_INPUTS=always hashes them anyway).
    `settle` takes the sha256 the pass computed, hashes the files the pass did not read, and raises
    DigestMismatchError when a file is not what the manifest lists or, without a manifest, when the folder's
    digest is not the expected one. Nothing made from the input may be published before `settle` returns.

    Inputs that are not local folders are fetched (downloaded and checked in full) by storage.fetch.
    """

    def __init__(self, uri: str) -> None:
        self.uri: ArtifactURI = parse_uri(uri)
        self.expect = integrity.expected_digests().get(self.uri.raw)
        self.deferred = False
        self.verified = False
        self.trust_manifest = False
        self._digest: str | None = None
        local = self.uri.local_path() if self.uri.is_local else None
        if local is None or not local.is_dir() or local.is_symlink():
            self.path = storage.fetch(self.uri, self.expect)
            self.verified = True
            self.manifest = read_manifest(self.path) if self.path.is_dir() else None
            return
        self.path = local
        _inside_claim(self.uri, local)
        check_tree(local, self.uri.raw)
        self.manifest = read_manifest(local)
        self.deferred = True
        if self.manifest is not None:
            integrity.check_manifest(self.uri.raw, self.manifest, self.expect)
            problems = self._listing_problems(self.manifest)
            if problems:
                raise integrity.DigestMismatchError(
                    f"{self.uri.raw}: files do not match the manifest: {'; '.join(problems[:5])}"
                )
            self._digest = self.manifest.digest
            self.trust_manifest = os.environ.get(HASH_INPUTS_ENV, "").strip().lower() != "always"

    @property
    def hash_needed(self) -> bool:
        """Whether the pass must hash what it reads: not for an input already fetched and checked in full, nor
        when a manifest already vouches for the folder (checked above: self-consistent, the recorded digest,
        exactly its files at their sizes), unless $TUNEOPS_HASH_INPUTS is `always`."""
        return self.deferred and not self.trust_manifest

    def _listing_problems(self, m: Manifest) -> list[str]:
        problems = []
        listed = {str(f["path"]) for f in m.files}
        for f in m.files:
            p = inside(self.path, str(f["path"]), "manifest")
            if p.is_symlink() or not p.is_file():
                problems.append(f"missing {f['path']}")
            elif p.stat().st_size != int(f["size"]):
                problems.append(f"size of {f['path']} differs")
        problems += [f"unlisted {r.as_posix()}" for r in list_files(self.path) if r.as_posix() not in listed]
        return problems

    @property
    def digest(self) -> str | None:
        """The input's digest when known without reading it (a manifest), or once verified/settled."""
        return self._digest

    def verify_now(self) -> str:
        """Checks the input in full now (storage.fetch's check) and returns its digest: for a path that
        will not be read in a pass (peft's merge, a reused output)."""
        if not self.verified:
            check_input(self.uri, self.path, self.expect)
            self.verified = True
        if self._digest is None or self.manifest is None:
            self._digest = storage.digest_of(self.path)
        return self._digest

    def settle(self, hashed: Ledger) -> str:
        """The input's digest from the pass's hashes (plus the files the pass did not read), checked."""
        rows: list[dict[str, Any]] = []
        listed_files = {str(f["path"]): f for f in self.manifest.files} if self.manifest is not None else {}
        for rel in list_files(self.path):
            key = rel.as_posix()
            d = hashed.get(key)
            p = self.path / rel
            if d is None and self.trust_manifest:
                listed = listed_files.get(key)
                if listed is not None:  # vouched for by the manifest: its size is checked below
                    d = FileDigest(str(listed["sha256"]), p.stat().st_size)
            if d is None:
                d = FileDigest(sha256_file(p), p.stat().st_size)
            rows.append({"path": key, "sha256": d.sha256, "size": d.size})
        if self.manifest is not None:
            want = {str(f["path"]): (str(f["sha256"]), int(f["size"])) for f in self.manifest.files}
            have = {str(r["path"]): (str(r["sha256"]), int(r["size"])) for r in rows}
            problems = [f"sha256 of {p} differs" for p in sorted(want) if p in have and have[p] != want[p]]
            problems += [f"missing {p}" for p in sorted(set(want) - set(have))]
            problems += [f"unlisted {p}" for p in sorted(set(have) - set(want))]
            if problems:
                raise integrity.DigestMismatchError(
                    f"{self.uri.raw}: files do not match the manifest: {'; '.join(problems[:5])}"
                )
            self._digest = self.manifest.digest
        else:
            actual = files_digest(rows)
            if self.expect and actual != self.expect:
                raise integrity.DigestMismatchError(
                    f"{self.uri.raw}: content digest {_short(actual)} differs from the recorded "
                    f"{_short(self.expect)}"
                )
            self._digest = actual
        self.verified = True
        return self._digest


def _inside_claim(u: ArtifactURI, p: Path) -> None:
    """A pvc:// path stays inside its claim once links in its folders are resolved (as storage.fetch)."""
    if u.scheme != "pvc":
        return
    claim = os.path.realpath(pvc_root() / u.claim)
    if os.path.commonpath([claim, os.path.realpath(p)]) != claim:
        raise InputError(f"{u.raw}: {p} leads outside the claim {u.claim}; refused")


def may_hold_reusable(out: storage.Output) -> bool:
    """Whether something at the output could be reused (a local folder with a merge's manifest); remote
    outputs are assumed to (asking costs a request, and the check is what decides)."""
    if not out.uri.is_local:
        return True
    m = read_manifest(out.uri.local_path())
    return m is not None and m.worker == "merge"


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for name in [*names, "."]:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def commit_hashed(out: storage.Output, hashed: Ledger, **fields: Any) -> Manifest:
    """Output.commit with the sha256 the writers took: the manifest lists every staged file (any not written
    through a hashing writer, or whose size changed since, is hashed here), then it is published. Remote
    outputs go through Output.commit (which hashes again before uploading)."""
    if not out.uri.is_local or out.staging is None:
        return out.commit(**fields)
    staging = out.staging
    files: list[dict[str, Any]] = []
    for rel in list_files(staging):
        p = staging / rel
        size = p.stat().st_size
        d = hashed.get(rel.as_posix())
        sha = d.sha256 if d is not None and d.size == size else sha256_file(p)
        files.append({"path": rel.as_posix(), "sha256": sha, "size": size})
    m = Manifest(
        format=str(fields.get("format", "")),
        files=files,
        digest=files_digest(files),
        size_bytes=sum(int(f["size"]) for f in files),
        worker=str(fields.get("worker", "")),
        key=str(fields.get("key", "")),
        inputs=dict(fields.get("inputs") or {}),
        parameters=dict(fields.get("parameters") or {}),
        tools=dict(fields.get("tools") or {}),
        notable=list(fields.get("notable") or []),
    )
    (staging / MANIFEST_NAME).write_text(m.dumps())
    _fsync_tree(staging)
    storage.publish_dir(staging, out.uri.local_path())
    out.staging = None
    out._unlock()  # the staging folder's lock, as Output.commit lets it go
    return m
