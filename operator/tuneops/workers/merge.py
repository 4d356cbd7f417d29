"""LoRA merge: a streaming merge shard by shard (bit-identical to peft's merge_and_unload), and peft's own."""

from __future__ import annotations

import json
import logging
import math
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneops import storage
from tuneops.storage.manifest import tool_versions
from tuneops.workers.common import (
    DTYPES,
    InvalidInput,
    copy_model_side_files,
    read_json,
    safetensors_shards,
    torch_dtype,
)
from tuneops.workers.inspect import PEFT_PREFIX, Adapter, compatibility, safetensors_header, scale_for
from tuneops.workers.result import ArtifactResult, WorkerResult

log = logging.getLogger("tuneops.workers.merge")

METHODS = ("stream", "peft")
AUTO = "auto"
DEFAULT_DTYPE = "float16"
TOOLS = ("torch", "safetensors", "transformers", "peft")


@dataclass
class _Plan:
    """What happens to each base tensor: a LoRA delta, an embedding delta, or a replacement."""

    linear: dict[str, tuple[Any, Any, float]]  # base key -> (A, B, scaling)
    embedding: dict[str, tuple[Any, Any, float]]
    replace: dict[str, Any]  # base key -> tensor (modules_to_save, saved base layers)


def _plan(adapter: Adapter) -> _Plan:
    from safetensors.torch import load_file

    tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(adapter.weights_file)).items()}
    plan = _Plan({}, {}, {})
    used: set[str] = set()
    for module, kind in adapter.modules.items():
        _, _, scaling = scale_for(adapter.config, module)
        if kind == "linear":
            a, b = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
            plan.linear[f"{module}.weight"] = (tensors[a], tensors[b], scaling)
        else:
            a, b = f"{module}.lora_embedding_A", f"{module}.lora_embedding_B"
            plan.embedding[f"{module}.weight"] = (tensors[a], tensors[b], scaling)
        used.update((a, b))
    for name, t in tensors.items():
        if name in used:
            continue
        if ".base_layer." in name:
            # peft saves the embedding's base layer next to an embedding LoRA and loads it back over the base.
            plan.replace[name.replace(".base_layer.", ".")] = t
        elif ".lora_" not in name:
            plan.replace[name] = t
        else:
            raise InvalidInput(f"adapter tensor {name} is not understood by the streaming merge")
    return plan


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


def _read_tensor(f: Any, data_start: int, info: dict[str, Any]) -> Any:
    """One tensor read with plain file I/O (not mmap): its pages are freed with it, so RSS stays small."""
    import torch

    dtype = getattr(torch, _DTYPES[info["dtype"]])
    begin, end = info["data_offsets"]
    if end == begin:
        return torch.empty(info["shape"], dtype=dtype)
    buf = bytearray(end - begin)
    f.seek(data_start + begin)
    if f.readinto(buf) != len(buf):
        raise InvalidInput(f"{f.name}: truncated safetensors file")
    return torch.frombuffer(buf, dtype=dtype).reshape(info["shape"])


def _merge_file(
    src: Path, dst: Path, dtype: str, plan: _Plan, pending: set[str]
) -> tuple[dict[str, str], int]:
    """Rewrites one safetensors file tensor by tensor: the output header is known up front (merging changes
    no shape), so each tensor is read, merged and written before the next is touched. Peak memory is the
    largest tensor plus the adapter, whatever the shard size."""
    import torch

    target = getattr(torch, dtype)
    header = safetensors_header(src)
    with src.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    data_start = 8 + n
    names = sorted(header, key=lambda k: int(header[k]["data_offsets"][0]))
    out_header: dict[str, Any] = {}
    offset = 0
    itemsize = {c: torch.empty(0, dtype=getattr(torch, d)).element_size() for c, d in _DTYPES.items()}
    for name in names:
        info = header[name]
        code = _CODES[dtype] if info["dtype"] in _FLOATS else info["dtype"]
        nbytes = math.prod(info["shape"]) * itemsize[code]
        out_header[name] = {"dtype": code, "shape": info["shape"], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    out_header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(out_header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with src.open("rb") as fin, dst.open("wb") as fout:
        fout.write(struct.pack("<Q", len(raw)))
        fout.write(raw)
        for name in names:
            w = _read_tensor(fin, data_start, header[name])
            if w.is_floating_point():
                w = w.to(target)
            w = _merged(name, w, plan).contiguous()
            pending.discard(name)
            data = w.reshape(-1).view(torch.uint8).numpy()
            if data.nbytes != out_header[name]["data_offsets"][1] - out_header[name]["data_offsets"][0]:
                raise RuntimeError(f"{name}: size changed while merging")
            fout.write(data.data)
            del w, data
    return dict.fromkeys(names, dst.name), offset


def stream_merge(base_dir: Path, adapter: Adapter, out_dir: Path, dtype: str) -> list[str]:
    """Merges file by file and tensor by tensor: memory is bounded by one tensor, never the model."""
    torch_dtype(dtype)
    plan = _plan(adapter)
    pending = set(plan.linear) | set(plan.embedding) | set(plan.replace)
    shards = safetensors_shards(base_dir)
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        names, size = _merge_file(shard, out_dir / shard.name, dtype, plan, pending)
        weight_map.update(names)
        total += size
        log.info("merged shard %d/%d (%s)", i + 1, len(shards), shard.name)
    if pending:
        raise InvalidInput(f"adapter modules not found in the base weights: {sorted(pending)[:5]}")
    if len(shards) > 1 or (base_dir / "model.safetensors.index.json").is_file():
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [s.name for s in shards]


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


def _write_config(base_dir: Path, out_dir: Path, dtype: str) -> None:
    cfg = read_json(base_dir / "config.json")
    cfg["dtype"] = dtype
    cfg.pop("torch_dtype", None)
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def resolve_dtype(requested: str, base_config: dict[str, Any]) -> str:
    """`auto` is the base model's own precision (config.json `dtype`, or `torch_dtype` before transformers 5),
    so a bfloat16 base is not narrowed to float16's range; float16 when the config names none we write."""
    if requested != AUTO:
        torch_dtype(requested)
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
    if method not in METHODS:
        raise InvalidInput(f"merge method {method!r} is not one of {', '.join(METHODS)}")
    if dtype != AUTO:
        torch_dtype(dtype)
    out = storage.Output.of(output_uri)
    base_dir = storage.fetch(base_uri)
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
    inputs = {"base": storage.digest_of(base_dir), "adapter": storage.digest_of(adapter_dir)}
    params = {"dtype": dtype, "method": used}
    tools = tool_versions(*TOOLS)
    key = storage.reuse_key("merge", inputs, params, tools)
    found = out.reusable(key)
    if found is not None:
        log.info("a complete merge of the same inputs exists at %s: reusing it", output_uri)
        return _result(out.location(found), found, used, dtype, reused=True)
    staging = out.begin()
    try:
        start = time.monotonic()
        if used == "stream":
            stream_merge(base_dir, adapter, staging, dtype)
            copy_model_side_files(base_dir, staging)
            _write_config(base_dir, staging, dtype)
        else:
            peft_merge(base_dir, adapter_dir, staging, dtype)
            for name in copy_model_side_files(base_dir, staging):
                log.debug("copied %s", name)
            _write_config(base_dir, staging, dtype)
        log.info("merge (%s, %s) done in %.1fs", used, dtype, time.monotonic() - start)
        manifest = out.commit(
            format="safetensors",
            worker="merge",
            key=key,
            inputs={
                "base": {"uri": base_uri, "digest": inputs["base"]},
                "adapter": {"uri": adapter_uri, "digest": inputs["adapter"]},
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
