"""What every worker shares: thread limits, logging, errors with exit codes, model folder helpers."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tuneops.storage.safety import safe_relative

log = logging.getLogger("tuneops.workers")

DTYPES = ("float32", "float16", "bfloat16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


class InvalidInput(Exception):
    """The request cannot work as given (exit code 2): bad URI, missing files, incompatible adapter."""


def setup_logging() -> None:
    level = os.environ.get("TUNEOPS_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cpu_limit() -> int | None:
    """CPUs the cgroup allows (cgroup v2 cpu.max or v1 quota/period), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        q = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        p = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        if q > 0 and p > 0:
            return max(1, math.ceil(q / p))
    except (OSError, ValueError):
        pass
    return None


def thread_count() -> int:
    """OMP_NUM_THREADS when set (the Job sets it from the CPU limit), else the cgroup limit, else the
    CPUs this process may run on. Oversubscribed BLAS threads made runs 90x slower."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cpu_limit()
    return max(1, min(avail, limit) if limit else avail)


def configure_threads(*, import_torch: bool = True) -> int:
    """Sets the thread count for BLAS and torch. Without import_torch, only the environment torch reads when
    it is imported later (the merge imports it on a thread of its own, beside its first I/O)."""
    n = thread_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    os.environ.setdefault("MKL_NUM_THREADS", str(n))
    if not import_torch:
        return n
    import torch

    torch.set_num_threads(n)
    # Only settable before the first parallel op; harmless when it was already used.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    return n


def check_dtype(name: str) -> str:
    if name not in DTYPES:
        raise InvalidInput(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return name


def torch_dtype(name: str) -> Any:
    check_dtype(name)
    import torch

    return getattr(torch, name)


def model_side_files(src: Path) -> list[Path]:
    """Config, generation config, tokenizer and other small files of a model folder (not weights, not hidden
    files, not our manifest), the ones copy_model_side_files copies."""
    found = []
    for p in sorted(src.iterdir()):
        if p.name.startswith(".") or p.is_dir():
            continue
        if p.is_symlink() or not p.is_file():
            raise InvalidInput(f"{p} is a link or a special file; refused (never copied into an artifact)")
        if p.name.endswith(WEIGHT_SUFFIXES) or p.name in WEIGHT_INDEXES or p.name == "tuneops-artifact.json":
            continue
        if p.name.startswith("adapter_"):
            continue
        found.append(p)
    return found


def copy_model_side_files(src: Path, dst: Path) -> list[str]:
    """Copies config, generation config, tokenizer and other small files (not weights, not our manifest)."""
    copied = []
    for p in model_side_files(src):
        shutil.copy2(p, dst / p.name, follow_symlinks=False)
        copied.append(p.name)
    return copied


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{path.name} not found in {path.parent}") from None
    except ValueError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{path} is not a JSON object")
    return data


def safetensors_shards(model_dir: Path) -> list[Path]:
    """The safetensors files of a model in index order (single file or sharded)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        names = list(dict.fromkeys(str(v) for v in weight_map.values()))
        for n in names:
            safe_relative(n, f"{index.name}")
        missing = [n for n in names if not (model_dir / n).is_file()]
        if missing:
            raise InvalidInput(f"{model_dir}: shards listed in the index are missing: {missing[:3]}")
        return [model_dir / n for n in names]
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise InvalidInput(
            f"{model_dir}: no safetensors weights found (pytorch .bin checkpoints are not read)"
        )
    return shards


def export_code(dest: str | os.PathLike[str]) -> Path:
    """Copy this package's Python sources to `dest`/tuneops: a container of another image (vLLM's, for the
    benchmark Job) runs the worker code from there, with `dest` on its PYTHONPATH. Sources only: no caches."""
    src = Path(__file__).resolve().parent.parent
    out = Path(dest) / "tuneops"
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return out
