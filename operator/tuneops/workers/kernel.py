"""The merge's native kernel: the LoRA delta of a block of rows, fused into one pass (native/merge_kernel.c).

With it, a merge whose deltas all go into linear weights of the output's dtype never imports torch: the
kernel computes peft's arithmetic (a float32 chain of fused multiply-adds over the rank, the scaling, one add
and one rounding) straight from the bytes read into the bytes written. The ranks and shapes it is used for are
those where the BLAS torch calls sums in the same order (`fits`); the tests compare it with torch bit for bit.

The library is built from the source by `python -m tuneops.workers.kernel build` (`make setup`, the worker
image's build stage) into this package's `native/` folder, named by the source's digest, so that a stale build
is never loaded. Without it, or with $TUNEOPS_MERGE_KERNEL=torch, the merge uses torch as before;
$TUNEOPS_MERGE_KERNEL=native makes a missing or unusable library an error (the tests set it).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KERNEL_ENV = "TUNEOPS_MERGE_KERNEL"  # auto (default) | native | torch
LIB_ENV = "TUNEOPS_MERGE_KERNEL_LIB"  # an explicit path to the built library
SOURCE = Path(__file__).parent / "native" / "merge_kernel.c"
CFLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Wextra", "-Werror")
CODES = {"F32": 0, "F16": 1, "BF16": 2}
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
# The BLAS sums a product of rank r in order, with fused multiply-adds, for these shapes: below them (a few
# rows or columns) it takes small-matrix paths, and above this rank it sums in blocks. Outside, torch merges.
MAX_RANK = 128
MIN_DIM = 32


class KernelUnavailable(RuntimeError):
    """$TUNEOPS_MERGE_KERNEL=native, and the library is missing or does not load."""


def lib_name() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    return f"libtuneops-merge-{digest}.so"


def default_path() -> Path:
    return SOURCE.parent / lib_name()


def build(dest: Path | None = None, *, cc: str | None = None) -> Path:
    """Compiles the kernel into dest (default: next to its source, named by its digest); a no-op when that
    file is already there."""
    out = dest or default_path()
    if out.is_file():
        return out
    compiler = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise KernelUnavailable("no C compiler (cc) to build the merge kernel with")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        subprocess.run([compiler, *CFLAGS, "-o", str(staged), str(SOURCE), "-lm"], check=True)
        os.replace(staged, out)
    for old in out.parent.glob("libtuneops-merge-*.so"):  # builds of older sources
        if old != out:
            old.unlink(missing_ok=True)
    return out


@dataclass(frozen=True)
class Kernel:
    lib: Any
    path: Path

    @property
    def vector(self) -> bool:
        """Whether this CPU takes the vector path (x86-64 with AVX2, FMA and F16C)."""
        return bool(self.lib.tuneops_lora_merge_vector())

    def merge_rows(
        self,
        w: Any,
        in_code: str,
        out: Any,
        out_code: str,
        b: Any,
        a: Any,
        rows: int,
        cols: int,
        rank: int,
        scaling: float,
    ) -> int:
        """out[rows x cols] = round(w + (b @ a) * scaling); w and out are writable buffers (they may be the
        same one), b and a C-contiguous float32 arrays (rows x rank, rank x cols). 0, or 1 when a result is
        NaN. Every size is checked against its buffer first: the kernel trusts them."""
        for name, arr, shape in (("b", b, (rows, rank)), ("a", a, (rank, cols))):
            if arr.dtype.str != "<f4" or not arr.flags.c_contiguous or tuple(arr.shape) != shape:
                raise ValueError(f"merge kernel: {name} must be C-contiguous float32 of shape {shape}")
        for name, buf, code in (("w", w, in_code), ("out", out, out_code)):
            if memoryview(buf).nbytes < rows * cols * _ITEMSIZE[code]:
                raise ValueError(f"merge kernel: {name} holds fewer than {rows} x {cols} {code} values")
        rc = int(
            self.lib.tuneops_lora_merge_rows(
                _address(w),
                CODES[in_code],
                _address(out),
                CODES[out_code],
                b.ctypes.data,
                a.ctypes.data,
                rows,
                cols,
                rank,
                scaling,
            )
        )
        if rc == 2:
            raise KernelUnavailable(f"the merge kernel does not handle {in_code} -> {out_code}")
        return rc


def _address(buf: Any) -> int:
    view = memoryview(buf)
    if view.readonly:
        raise ValueError("the merge kernel needs a writable buffer")
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def mode() -> str:
    m = os.environ.get(KERNEL_ENV, "").strip().lower() or "auto"
    if m not in ("auto", "native", "torch"):
        raise KernelUnavailable(f"{KERNEL_ENV}={m!r}: expected auto, native or torch")
    return m


@functools.cache
def _load(path: str) -> Kernel:
    lib = ctypes.CDLL(path)
    fn = lib.tuneops_lora_merge_rows
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_float,
    ]
    lib.tuneops_lora_merge_vector.restype = ctypes.c_int
    lib.tuneops_lora_merge_vector.argtypes = []
    return Kernel(lib, Path(path))


def load() -> Kernel | None:
    """The kernel, or None where the merge is to use torch (asked for, or no library built for this source).
    Raises KernelUnavailable when $TUNEOPS_MERGE_KERNEL=native and it cannot be had."""
    m = mode()
    if m == "torch":
        return None
    explicit = os.environ.get(LIB_ENV, "").strip()
    path = Path(explicit) if explicit else default_path()
    if not path.is_file():
        if m == "native":
            raise KernelUnavailable(
                f"merge kernel {path} is not built (python -m tuneops.workers.kernel build)"
            )
        return None
    try:
        return _load(str(path))
    except (OSError, AttributeError) as exc:
        if m == "native":
            raise KernelUnavailable(f"merge kernel {path} does not load: {exc}") from None
        return None


def fits(rows: int, cols: int, rank: int, in_code: str, out_code: str) -> bool:
    """Whether the kernel merges a delta of this shape exactly as torch's BLAS does (module docstring)."""
    return (
        in_code == out_code
        and in_code in CODES
        and 1 <= rank <= MAX_RANK
        and rows >= MIN_DIM
        and cols >= MIN_DIM
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tuneops.workers.kernel", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the kernel (skipped when built for this source)")
    b.add_argument("--out", type=Path, help="where to write the library (default: next to its source)")
    sub.add_parser("path", help="print where the library is looked for")
    args = p.parse_args(argv)
    if args.cmd == "build":
        print(build(args.out))
    else:
        print(default_path())
    return 0


if __name__ == "__main__":
    sys.exit(main())
