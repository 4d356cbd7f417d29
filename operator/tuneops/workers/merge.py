"""LoRA merge: a streaming merge (bit-identical to peft's merge_and_unload; its I/O, hashing and overlap are
mergeio's: each file read once and written once, untouched tensors copied as bytes), and peft's own."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneops import storage
from tuneops.storage.manifest import tool_versions
from tuneops.workers import kernel as native
from tuneops.workers.common import (
    DTYPES,
    InvalidInput,
    check_dtype,
    copy_model_side_files,
    model_side_files,
    read_json,
    safetensors_shards,
    torch_dtype,
)
from tuneops.workers.inspect import PEFT_PREFIX, Adapter, compatibility, safetensors_header, scale_for
from tuneops.workers.mergeio import (
    Input,
    Ledger,
    Step,
    Tensor,
    commit_hashed,
    copy_hashed,
    may_hold_reusable,
    parse_header,
    rewrite_safetensors,
    row_blocks,
    write_hashed,
)
from tuneops.workers.result import ArtifactResult, WorkerResult

log = logging.getLogger("tuneops.workers.merge")

METHODS = ("stream", "peft")
AUTO = "auto"
DEFAULT_DTYPE = "float16"
TOOLS = ("torch", "safetensors", "transformers", "peft")
DELTA_BLOCK_BYTES = 512 << 10  # float32 delta computed at a time: it stays in cache
DELTA_MIN_ROWS = (
    16  # BLAS takes other code paths for one or two rows (gemv), whose sums may round differently
)


@dataclass(frozen=True)
class _Names:
    """What happens to each base tensor, from the adapter's header alone (no tensor loaded, no torch): the
    tensors a LoRA delta goes into, with the names and shapes of their A and B, and the replaced ones."""

    linear: dict[str, tuple[str, str]]  # base key -> (A, B)
    embedding: dict[str, tuple[str, str]]
    replace: dict[str, str]  # base key -> adapter tensor (modules_to_save, saved base layers)
    shapes: dict[str, tuple[int, ...]]  # adapter tensor -> shape

    def touched(self) -> set[str]:
        return set(self.linear) | set(self.embedding) | set(self.replace)


def _names(adapter: Adapter) -> _Names:
    names = _Names({}, {}, {}, {k: tuple(int(d) for d in v) for k, v in adapter.shapes.items()})
    used: set[str] = set()
    for module, kind in adapter.modules.items():
        if kind == "linear":
            a, b = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
            names.linear[f"{module}.weight"] = (a, b)
        else:
            a, b = f"{module}.lora_embedding_A", f"{module}.lora_embedding_B"
            names.embedding[f"{module}.weight"] = (a, b)
        used.update((a, b))
    for name in names.shapes:
        if name in used:
            continue
        if ".base_layer." in name:
            # peft saves the embedding's base layer next to an embedding LoRA and loads it back over the base.
            names.replace[name.replace(".base_layer.", ".")] = name
        elif ".lora_" not in name:
            names.replace[name] = name
        else:
            raise InvalidInput(f"adapter tensor {name} is not understood by the streaming merge")
    return names


@dataclass
class _Plan:
    """The tensors of each delta and replacement, loaded."""

    linear: dict[str, tuple[Any, Any, float]]  # base key -> (A, B, scaling)
    embedding: dict[str, tuple[Any, Any, float]]
    replace: dict[str, Any]  # base key -> tensor


def _plan(adapter: Adapter, names: _Names | None = None) -> _Plan:
    from safetensors.torch import load_file

    names = names or _names(adapter)
    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(adapter.weights_file)).items()}
    plan = _Plan({}, {}, {})
    for kind, into in ((names.linear, plan.linear), (names.embedding, plan.embedding)):
        for key, (a, b) in kind.items():
            _, _, scaling = scale_for(adapter.config, key.removesuffix(".weight"))
            into[key] = (tensors[a], tensors[b], scaling)
    for key, name in names.replace.items():
        plan.replace[key] = tensors[name]
    return plan


_ADAPTER_HEADER_MAX = 100 << 20


def _adapter_f32(adapter: Adapter, wanted: set[str]) -> dict[str, Any]:
    """The named adapter tensors as C-contiguous float32 numpy arrays, read without torch: exactly torch's
    `.float()` of them (F16 and BF16 widen exactly; F64 rounds to nearest even, as torch does)."""
    import numpy as np

    path = adapter.weights_file
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        (n,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
        if n < 0 or n > _ADAPTER_HEADER_MAX or 8 + n > size:
            raise InvalidInput(f"{path}: not a safetensors file")
        tensors = {
            t.name.removeprefix(PEFT_PREFIX): t for t in parse_header(f.read(n), size - 8 - n, str(path))
        }
        out: dict[str, Any] = {}
        for name in sorted(wanted, key=lambda k: tensors[k].begin if k in tensors else -1):
            t = tensors.get(name)
            if t is None:
                raise InvalidInput(f"{path}: tensor {name} not found")
            f.seek(8 + n + t.begin)
            raw = f.read(t.end - t.begin)
            if len(raw) != t.end - t.begin:
                raise InvalidInput(f"{path}: truncated safetensors file")
            if t.dtype == "F32":
                arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            elif t.dtype == "BF16":
                arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif t.dtype in ("F16", "F64"):
                arr = np.frombuffer(raw, dtype="<f2" if t.dtype == "F16" else "<f8").astype(np.float32)
            else:
                raise InvalidInput(f"{path}: tensor {name} has dtype {t.dtype}, not a float")
            out[name] = np.ascontiguousarray(arr.reshape(t.shape))
    return out


class _Native:
    """The native kernel and the adapter's linear deltas as float32 arrays, loaded on their first use."""

    def __init__(self, kernel: native.Kernel, adapter: Adapter, names: _Names) -> None:
        self.kernel, self._adapter, self._names = kernel, adapter, names
        self._deltas: concurrent.futures.Future[dict[str, tuple[Any, Any, float]]] | None = None

    def start(self) -> None:
        """Loads the adapter's linear deltas on a thread of its own, beside the first tensors' copy."""
        if self._deltas is None:
            pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="merge-adapter")
            self._deltas = pool.submit(self._load)
            pool.shutdown(wait=False)

    def _load(self) -> dict[str, tuple[Any, Any, float]]:
        wanted = {x for pair in self._names.linear.values() for x in pair}
        arrays = _adapter_f32(self._adapter, wanted)
        deltas = {}
        for k, (a, b) in self._names.linear.items():
            _, _, scaling = scale_for(self._adapter.config, k.removesuffix(".weight"))
            deltas[k] = (arrays[a], arrays[b], scaling)
        return deltas

    def delta(self, key: str) -> tuple[Any, Any, float]:
        """(A, B, scaling) of a linear weight, A and B float32."""
        self.start()
        assert self._deltas is not None
        return self._deltas.result()[key]

    def takes(self, t: Tensor, out_code: str) -> bool:
        return _kernel_takes(self._names, t, out_code)


def _kernel_takes(names: _Names, t: Tensor, out_code: str) -> bool:
    """Whether the kernel merges this base tensor's LoRA delta (kernel.fits: shapes, rank, no cast)."""
    if t.name not in names.linear or len(t.shape) != 2:
        return False
    rank = names.shapes[names.linear[t.name][0]][0]
    return native.fits(t.shape[0], t.shape[1], rank, t.dtype, out_code)


def _needs_torch(shards: list[Path], names: _Names, dtype: str, kernel: native.Kernel | None) -> bool:
    """Whether the merge will need torch: for embedding deltas, replaced tensors, dtype casts and deltas the
    kernel does not take (or without the kernel). Read from the headers, before the pass, so that torch's
    import overlaps the first tensors' copy when it is needed, and is not made when it is not."""
    if not names.touched():
        return False
    if kernel is None or names.embedding or names.replace:
        return True
    out = _CODES[dtype]
    for shard in shards:
        for name, info in safetensors_header(shard).items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            code = str(info.get("dtype", ""))
            shape = tuple(int(d) for d in info.get("shape", ()))
            if code in _FLOATS and code != out:
                return True
            if name in names.linear and not _kernel_takes(names, Tensor(name, code, shape, 0, 0), out):
                return True
    return False


class _TorchLoader:
    """torch imported, its threads set and the adapter's tensors loaded, on a thread of its own: importing
    torch takes seconds of one core, during which the pass already copies the tensors no adapter touches.
    `plan()` waits for it (the first tensor that needs torch)."""

    def __init__(self, adapter: Adapter, names: _Names, *, start: bool = True) -> None:
        self._adapter, self._names = adapter, names
        self._plan: _Plan | None = None
        self._error: BaseException | None = None
        self.threads: int | None = None  # torch's thread count before the pass
        self._thread = threading.Thread(target=self._load, name="merge-torch", daemon=True)
        self._lock = threading.Lock()
        self.started = False
        if start:
            self.start()

    def start(self) -> None:
        with self._lock:
            if not self.started:
                self.started = True
                self._thread.start()

    def _load(self) -> None:
        try:
            import torch

            self.threads = torch.get_num_threads()
            with contextlib.suppress(RuntimeError):  # only settable before torch's first parallel work
                torch.set_num_interop_threads(1)
            # the reader and the writer hash on threads of their own: torch keeps one core's worth fewer
            torch.set_num_threads(max(1, self.threads - 1))
            self._plan = _plan(self._adapter, self._names)
        except BaseException as exc:
            self._error = exc

    def plan(self) -> _Plan:
        self.start()  # a merge that was not expected to need torch (see _needs_torch) imports it now
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._plan is not None
        return self._plan

    def close(self) -> None:
        if not self.started:
            return
        self._thread.join()
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)


def _merged(key: str, w: Any, plan: _Plan) -> Any:
    """One base tensor after the merge, computed exactly as peft does on CPU:
    delta = (B @ A) * scaling in float32, then one in-place add into the weight's dtype."""
    if key in plan.replace:
        w = plan.replace[key].to(w.dtype)
    if key in plan.linear:
        a, b, scaling = plan.linear[key]
        delta = (b.float() @ a.float()) * scaling
        w = w.clone()
        w += delta
    elif key in plan.embedding:
        a, b, scaling = plan.embedding[key]
        delta = (b.float() @ a.float()).T * scaling
        w = w.clone()
        w += delta
    return w


_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def _as_bytes(t: Any) -> Any:
    """A tensor's bytes as a buffer (numpy array of uint8) that keeps the tensor alive."""
    import torch

    return t.contiguous().reshape(-1).view(torch.uint8).numpy()


def _steps(
    dtype: str, names: _Names, torch_ready: _TorchLoader, pending: set[str], fused: _Native | None = None
) -> Callable[[Tensor], Step]:
    """What the merge does to each base tensor, for mergeio: bytes copied as they are (nothing touches it and
    its dtype stays), a cast, or the LoRA delta added a row range at a time (peft's arithmetic, see _merged:
    float32 delta, scaled, one in-place add into the weight's dtype). Embedding deltas and replaced tensors
    are merged whole, as before. Which one is decided from names and shapes; torch is first needed by the
    first tensor that changes (torch_ready waits for its import)."""
    # columns -> float32 rows the deltas are computed into, reused (a fresh one each time costs page faults)
    scratch: dict[int, Any] = {}

    def delta_rows(n: int, cols: int) -> Any:
        import torch

        have = scratch.get(cols)
        if have is None or have.shape[0] < n:
            have = scratch[cols] = torch.empty(n, cols, dtype=torch.float32)
        return have[:n]

    def dtypes(code: str) -> tuple[Any, Any]:
        import torch

        return getattr(torch, _DTYPES[code]), getattr(torch, dtype)

    def step(t: Tensor) -> Step:
        pending.discard(t.name)
        floating = t.dtype in _FLOATS
        out = _CODES[dtype] if floating else t.dtype
        shape = t.shape
        if t.name in names.replace or t.name in names.embedding:

            def whole(data: memoryview, r0: int, r1: int) -> Any:
                import torch

                plan = torch_ready.plan()
                src, target = dtypes(t.dtype)
                w = (
                    torch.frombuffer(data, dtype=src).reshape(shape)
                    if data.nbytes
                    else torch.empty(shape, dtype=src)
                )
                if w.is_floating_point():
                    w = w.to(target)
                merged = _merged(t.name, w, plan)
                if tuple(merged.shape) != shape:
                    raise InvalidInput(
                        f"{t.name}: the adapter's tensor has shape {list(merged.shape)}, not {list(shape)}"
                    )
                return _as_bytes(merged)

            return Step(out, whole, whole=True)
        if t.name in names.linear:
            a_name, b_name = names.linear[t.name]
            rows_out, cols_in = names.shapes[b_name][0], names.shapes[a_name][-1]
            if len(shape) != 2 or (rows_out, cols_in) != shape:
                raise InvalidInput(f"{t.name}: LoRA delta {rows_out}x{cols_in} does not fit {list(shape)}")
            if fused is not None and fused.takes(t, out):
                kernel = fused.kernel
                rank = names.shapes[a_name][0]
                if names.shapes[a_name] != (rank, shape[1]) or names.shapes[b_name] != (shape[0], rank):
                    raise InvalidInput(
                        f"{t.name}: LoRA A {list(names.shapes[a_name])} and B {list(names.shapes[b_name])} "
                        "do not make a delta of one rank"
                    )

                def fused_rows(data: memoryview, r0: int, r1: int) -> Any:
                    a, b, scaling = fused.delta(t.name)
                    if kernel.merge_rows(
                        data, t.dtype, data, out, b[r0:r1], a, r1 - r0, shape[1], a.shape[0], scaling
                    ):
                        raise InvalidInput(
                            f"{t.name}: the merged weight has NaN values (the base weight or the adapter holds NaN "
                            "or infinite values)"
                        )
                    return data

                return Step(out, fused_rows)
            loaded: list[Any] = []

            def rows(data: memoryview, r0: int, r1: int) -> Any:
                import torch

                if not loaded:
                    a, b, scaling = torch_ready.plan().linear[t.name]
                    loaded.extend((a.float(), b.float(), scaling))
                af, bf, scaling = loaded
                src, target = dtypes(t.dtype)
                w = torch.frombuffer(data, dtype=src).view(r1 - r0, shape[1])
                if src != target:
                    w = w.to(target)
                # exactly peft's `(B @ A) * scaling`, then `weight += delta`, a block of rows that stays in cache
                # at a time (BLAS sums each row the same way from DELTA_MIN_ROWS rows up as in peft's one
                # matmul; test_merge proves the bits)
                per = DELTA_BLOCK_BYTES // (4 * shape[1])
                for s0, s1 in row_blocks(r1 - r0, per, least=DELTA_MIN_ROWS):
                    delta = torch.mm(bf[r0 + s0 : r0 + s1], af, out=delta_rows(s1 - s0, shape[1]))
                    delta.mul_(scaling)
                    w[s0:s1] += delta
                return data if src == target else _as_bytes(w)

            return Step(out, rows)
        if out != t.dtype:

            def cast(data: memoryview, r0: int, r1: int) -> Any:
                import torch

                torch_ready.plan()
                src, target = dtypes(t.dtype)
                return _as_bytes(torch.frombuffer(data, dtype=src).to(target))

            return Step(out, cast)
        return Step(out)  # no adapter touches it: its bytes are copied

    return step


@dataclass
class Streamed:
    """What a streaming merge read and wrote, with the sha256 of each file taken as it passed."""

    read: Ledger  # base files, relative to the base folder
    written: Ledger  # output files, relative to the output folder
    shards: list[str]
    kernel: str = "torch"  # what merged the linear deltas it could: "native" (kernel.py) or "torch"


def stream_merge(
    base_dir: Path, adapter: Adapter, out_dir: Path, dtype: str, *, hash_input: bool = True
) -> Streamed:
    """Merges file by file and piece by piece: each base file is read once and each output file written once
    (their sha256 taken in that pass; the input's only when hash_input), with reading, merging and writing
    overlapped (mergeio), and torch imported while the first untouched tensors are copied. Memory is bounded
    by a few pieces, never the model. Writes the weights, the index, the side files and config.json."""
    check_dtype(dtype)
    names = _names(adapter)
    pending = names.touched()
    shards = safetensors_shards(base_dir)
    done = Streamed({}, {}, [s.name for s in shards])
    weight_map: dict[str, str] = {}
    total = 0
    kernel = native.load()
    fused = _Native(kernel, adapter, names) if kernel is not None else None
    if fused is not None and names.linear:
        fused.start()
    torch_ready = _TorchLoader(adapter, names, start=_needs_torch(shards, names, dtype, kernel))
    done.kernel = "native" if kernel is not None else "torch"
    try:
        for i, shard in enumerate(shards):
            r = rewrite_safetensors(
                shard,
                out_dir / shard.name,
                _steps(dtype, names, torch_ready, pending, fused),
                hash_input=hash_input,
            )
            if r.input is not None:
                done.read[shard.relative_to(base_dir).as_posix()] = r.input
            done.written[shard.name] = r.output
            weight_map.update(dict.fromkeys(r.names, shard.name))
            total += r.data_bytes
            log.info(
                "merged shard %d/%d (%s, %.0f MB): kernel %s, torch %s, %s",
                i + 1,
                len(shards),
                shard.name,
                r.output.size / 1e6,
                done.kernel,
                "imported" if torch_ready.started else "not imported",
                ", ".join(f"{k} {v:.2f}s" for k, v in r.seconds.items()),
            )
    finally:
        torch_ready.close()
    if pending:
        raise InvalidInput(f"adapter modules not found in the base weights: {sorted(pending)[:5]}")
    if len(shards) > 1 or (base_dir / "model.safetensors.index.json").is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        name = "model.safetensors.index.json"
        done.written[name] = write_hashed(out_dir / name, (json.dumps(index, indent=2) + "\n").encode())
    for p in model_side_files(base_dir):
        done.read[p.name] = done.written[p.name] = copy_hashed(p, out_dir / p.name)
    done.written["config.json"] = write_hashed(out_dir / "config.json", _config_bytes(base_dir, dtype))
    return done


def peft_merge(
    base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str, max_shard_size: str = "5GB"
) -> None:
    """peft's merge_and_unload: loads the whole model; handles DoRA and every adapter type peft can merge."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(
        str(base_dir), dtype=torch_dtype(dtype), trust_remote_code=False
    )
    model: Any = PeftModel.from_pretrained(base, str(adapter_dir))
    merged: Any = model.merge_and_unload()
    merged.save_pretrained(str(out_dir), max_shard_size=max_shard_size)


def _config_bytes(base_dir: Path, dtype: str) -> bytes:
    cfg = read_json(base_dir / "config.json")
    cfg["dtype"] = dtype
    cfg.pop("torch_dtype", None)
    return (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()


def _write_config(base_dir: Path, out_dir: Path, dtype: str) -> None:
    (out_dir / "config.json").write_bytes(_config_bytes(base_dir, dtype))


def resolve_dtype(requested: str, base_config: dict[str, Any]) -> str:
    """`auto` is the base model's own precision (config.json `dtype`, or `torch_dtype` before transformers 5),
    so a bfloat16 base is not narrowed to float16's range; float16 when the config names none we write."""
    if requested != AUTO:
        check_dtype(requested)
        return requested
    named = base_config.get("dtype") or base_config.get("torch_dtype")
    if isinstance(named, str) and named.removeprefix("torch.") in DTYPES:
        return named.removeprefix("torch.")
    if named:
        log.warning("base model dtype %r is not one the merge writes; using %s", named, DEFAULT_DTYPE)
    return DEFAULT_DTYPE


def run_merge(
    base_uri: str, adapter_uri: str, output_uri: str, *, dtype: str = AUTO, method: str = "stream"
) -> WorkerResult:
    """Checks the inputs, reuses a complete merge of the same inputs, else merges and publishes.

    The base is read once. Its checks are storage.fetch's, with the hashing done in the streaming merge's own
    read (mergeio.Input): a base with a manifest is known by the manifest's digest up front and its files are
    checked against it as they are read; a base without one is hashed in that read (or up front, when an
    output that might be reused is already there, since reuse is decided by the digest). Nothing is published
    until the bytes read are found to be the recorded ones; the output's manifest uses the hashes the writer
    took. peft's merge, and a reused output, check the base in full first, as before."""
    if method not in METHODS:
        raise InvalidInput(f"merge method {method!r} is not one of {', '.join(METHODS)}")
    if dtype != AUTO:
        check_dtype(dtype)
    out = storage.Output.of(output_uri)
    base = Input(base_uri)
    base_dir = base.path
    adapter_dir = storage.fetch(adapter_uri)
    adapter = Adapter.load(adapter_dir)
    if not (base_dir / "config.json").is_file():
        raise InvalidInput(f"{base_uri}: config.json not found (not a transformers model folder)")
    requested, dtype = dtype, resolve_dtype(dtype, read_json(base_dir / "config.json"))
    if requested == AUTO:
        log.info("dtype auto: the base model's %s", dtype)
    problems = [p for p in compatibility(adapter, base_dir, merge=False, max_lora_rank=None)]
    if problems:
        raise InvalidInput("adapter does not fit the base model: " + "; ".join(problems[:5]))
    unsupported = adapter.stream_unsupported()
    used = method
    if method == "stream" and unsupported:
        log.warning(
            "streaming merge does not handle %s: using peft's merge_and_unload", ", ".join(unsupported)
        )
        used = "peft"
    # the adapter's digest is needed before the pass only to look for a merge to reuse: it is hashed beside
    # the pass otherwise
    adapter_hash = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="merge-adapter-digest")
    adapter_digest = adapter_hash.submit(storage.digest_of, adapter_dir)
    adapter_hash.shutdown(wait=False)
    params = {"dtype": dtype, "method": used}
    tools = tool_versions(*TOOLS)

    def key_for(base_digest: str) -> str:
        return storage.reuse_key(
            "merge", {"base": base_digest, "adapter": adapter_digest.result()}, params, tools
        )

    reusable = may_hold_reusable(out)
    if used == "peft" or (base.digest is None and reusable):
        base.verify_now()
    if base.digest is not None and reusable:
        found = out.reusable(key_for(base.digest))
        if found is not None:
            base.verify_now()
            log.info("a complete merge of the same inputs exists at %s: reusing it", output_uri)
            return _result(out.location(found), found, used, dtype, reused=True)
    staging = out.begin()
    try:
        start = time.monotonic()
        written: Ledger = {}
        if used == "stream":
            streamed = stream_merge(base_dir, adapter, staging, dtype, hash_input=base.hash_needed)
            written = streamed.written
            if base.deferred:
                base.settle(streamed.read)
        else:
            peft_merge(base_dir, adapter_dir, staging, dtype)
            for name in copy_model_side_files(base_dir, staging):
                log.debug("copied %s", name)
            _write_config(base_dir, staging, dtype)
        base_digest = base.digest if base.digest is not None else base.verify_now()
        key = key_for(base_digest)
        log.info("merge (%s, %s) done in %.1fs", used, dtype, time.monotonic() - start)
        manifest = commit_hashed(
            out,
            written,
            format="safetensors",
            worker="merge",
            key=key,
            inputs={
                "base": {"uri": base_uri, "digest": base_digest},
                "adapter": {"uri": adapter_uri, "digest": adapter_digest.result()},
            },
            parameters=params,
            tools=tools,
        )
    except BaseException:
        out.abort()
        raise
    return _result(out.location(manifest), manifest, used, dtype, reused=False)


def _result(uri: str, m: storage.Manifest, method: str, dtype: str, *, reused: bool) -> WorkerResult:
    return WorkerResult(
        artifact=ArtifactResult(
            uri=uri, digest=m.digest, size_bytes=m.size_bytes, format=m.format, reused=reused or None
        ),
        method=method,
        dtype=dtype,
    )
