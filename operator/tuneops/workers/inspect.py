"""Facts about a peft adapter and the problems it would meet with a base model (merge, serving)."""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops import storage
from tuneops.storage import remote
from tuneops.storage.manifest import list_files
from tuneops.storage.uri import join_uri, parse_uri
from tuneops.workers.common import InvalidInput, read_json
from tuneops.workers.result import AdapterFacts, ArtifactResult, WorkerResult

log = logging.getLogger("tuneops.workers.inspect")

PEFT_PREFIX = "base_model.model."
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
MERGEABLE_TYPES = ("LORA",)


def safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor names, dtypes and shapes from a safetensors header, without reading any weights."""
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise InvalidInput(f"{path} is not a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise InvalidInput(f"{path}: safetensors header of {n} bytes is implausible")
        header: dict[str, Any] = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def tensor_shapes(files: list[Path]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for f in files:
        for name, info in safetensors_header(f).items():
            out[name] = list(info["shape"])
    return out


def pattern_key(patterns: Mapping[str, Any], module: str) -> str | None:
    """The rank/alpha pattern that applies to a module path, matched the way peft matches it."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


def scale_for(config: Mapping[str, Any], module: str) -> tuple[int, float, float]:
    """(rank, alpha, scaling) of one module: rank/alpha patterns, then rsLoRA (alpha/sqrt(r)) or alpha/r."""
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rk = pattern_key(rank_pattern, module)
    ak = pattern_key(alpha_pattern, module)
    r = int(rank_pattern[rk]) if rk is not None else int(config.get("r", 8))
    alpha = alpha_pattern[ak] if ak is not None else config.get("lora_alpha", 8)
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, float(alpha), scaling


@dataclass
class Adapter:
    """A peft adapter folder read without torch: its config and the shapes of its tensors."""

    path: Path
    config: dict[str, Any]
    shapes: dict[str, list[int]]
    weights_file: Path
    modules: dict[str, str] = field(default_factory=dict)  # module path -> "linear" | "embedding"

    @classmethod
    def load(cls, path: Path) -> Adapter:
        cfg = read_json(path / "adapter_config.json")
        weights = path / "adapter_model.safetensors"
        if not weights.is_file():
            if (path / "adapter_model.bin").is_file():
                raise InvalidInput(
                    f"{path}: adapter_model.bin is not read; save the adapter with safetensors"
                )
            raise InvalidInput(f"{path}: adapter_model.safetensors not found")
        shapes = {k.removeprefix(PEFT_PREFIX): v for k, v in tensor_shapes([weights]).items()}
        modules: dict[str, str] = {}
        for name in shapes:
            if name.endswith(".lora_A.weight"):
                modules[name.removesuffix(".lora_A.weight")] = "linear"
            elif name.endswith(".lora_embedding_A"):
                modules[name.removesuffix(".lora_embedding_A")] = "embedding"
        return cls(path=path, config=cfg, shapes=shapes, weights_file=weights, modules=modules)

    @property
    def peft_type(self) -> str:
        return str(self.config.get("peft_type", "")).upper()

    def target_modules(self) -> list[str]:
        t = self.config.get("target_modules") or []
        return [t] if isinstance(t, str) else sorted(str(x) for x in t)

    def modules_to_save(self) -> list[str]:
        return sorted(str(x) for x in (self.config.get("modules_to_save") or []))

    def max_rank(self) -> int:
        ranks = [int(self.config.get("r", 0))] + [
            int(v) for v in (self.config.get("rank_pattern") or {}).values()
        ]
        ranks += [
            self.shapes[f"{m}.lora_A.weight"][0] for m, kind in self.modules.items() if kind == "linear"
        ]
        return max(ranks)

    def facts(self) -> AdapterFacts:
        return AdapterFacts(
            type=self.peft_type or "UNKNOWN",
            rank=int(self.config.get("r", 0)),
            alpha=float(self.config.get("lora_alpha", 0)),
            rs_lora=bool(self.config.get("use_rslora", False)),
            target_modules=self.target_modules(),
            modules_to_save=self.modules_to_save(),
            base_model_name=self.config.get("base_model_name_or_path"),
            use_dora=bool(self.config.get("use_dora", False)),
            max_rank=self.max_rank(),
        )

    def stream_unsupported(self) -> list[str]:
        """Why the streaming merge cannot handle this adapter (the peft method may)."""
        why = []
        if self.peft_type not in MERGEABLE_TYPES:
            why.append(f"adapter type {self.peft_type or 'unknown'} is not LoRA")
        if self.config.get("use_dora"):
            why.append("DoRA adapters")
        if self.config.get("lora_bias"):
            why.append("lora_bias")
        if self.config.get("fan_in_fan_out"):
            why.append("fan_in_fan_out")
        if self.config.get("trainable_token_indices"):
            why.append("trainable_token_indices")
        if any(".lora_magnitude_vector" in k or k.endswith(".lora_B.bias") for k in self.shapes):
            why.append("extra LoRA parameters (magnitude or bias)")
        return why


def compatibility(
    adapter: Adapter, base_dir: Path | None, *, merge: bool, max_lora_rank: int | None
) -> list[str]:
    """Problems a person can act on, each one line. Empty means the adapter fits."""
    problems: list[str] = []
    if adapter.peft_type not in MERGEABLE_TYPES:
        problems.append(
            f"adapter type {adapter.peft_type or 'unknown'} is not LoRA; only LoRA adapters are supported"
        )
    if merge and adapter.config.get("use_dora"):
        problems.append("DoRA adapter: the streaming merge does not support DoRA; use merge method 'peft'")
    if not adapter.modules:
        problems.append("adapter has no LoRA weights (no lora_A tensors)")
    if max_lora_rank is not None and adapter.max_rank() > max_lora_rank:
        problems.append(f"adapter rank {adapter.max_rank()} is above max-lora-rank {max_lora_rank}")
    if base_dir is None:
        return problems
    base_files = sorted(base_dir.glob("*.safetensors"))
    if not base_files:
        index = base_dir / "model.safetensors.index.json"
        if not index.is_file():
            problems.append(f"base model at {base_dir} has no safetensors weights")
            return problems
        names = set(read_json(index).get("weight_map", {}))
        for m in sorted(adapter.modules):
            if f"{m}.weight" not in names:
                problems.append(f"target module {m} not found in the base model")
        return problems
    base = tensor_shapes(base_files)
    for m, kind in sorted(adapter.modules.items()):
        w = base.get(f"{m}.weight")
        if w is None:
            problems.append(f"target module {m} not found in the base model")
            continue
        if kind == "linear":
            a = adapter.shapes[f"{m}.lora_A.weight"]
            b = adapter.shapes[f"{m}.lora_B.weight"]
            want = [b[0], a[1]]
        else:
            a = adapter.shapes[f"{m}.lora_embedding_A"]
            b = adapter.shapes[f"{m}.lora_embedding_B"]
            want = [a[1], b[0]]
        if list(w) != want:
            problems.append(f"shape mismatch at {m}: base {list(w)}, adapter implies {want}")
    for name in sorted(adapter.shapes):
        if any(s in name for s in (".lora_", ".base_layer.")):
            continue
        w = base.get(name)
        if w is None:
            problems.append(f"module to save {name} not found in the base model")
        elif list(w) != adapter.shapes[name]:
            problems.append(f"shape mismatch at {name}: base {list(w)}, adapter {adapter.shapes[name]}")
    return problems


def publish_adapter(adapter_dir: Path, adapter_uri: str, digest: str, publish: str) -> str:
    """Copy the adapter to `<publish>/<digest16>` (atomic, with a manifest) and return that URI.

    vLLM caches prefix blocks by adapter name and path: new weights reloaded from the same path can be served
    stale. A content-addressed path per version makes every weight change a change of path.
    """
    target = join_uri(publish, remote.content_dir(digest))
    # An S3 output is content-addressed by the storage layer itself (see storage.remote.s3_upload).
    out = storage.Output.of(publish if parse_uri(publish).scheme == "s3" else target)
    found = out.existing()
    if found is not None and found.digest == digest:
        log.info("adapter already published at %s", target)
        return target
    staging = out.begin()
    try:
        # list_files refuses links and special files: nothing outside the adapter is copied. It lists hidden
        # files too (the digest covers them), and leaves out only the tool's bookkeeping (the manifest).
        for rel in list_files(adapter_dir):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(adapter_dir / rel, staging / rel, follow_symlinks=False)
        manifest = out.commit(
            format="peft", worker="inspect", inputs={"adapter": {"uri": adapter_uri, "digest": digest}}
        )
    except BaseException:
        out.abort()
        raise
    target = out.location(manifest)
    log.info("adapter published at %s", target)
    return target


def run_inspect(
    adapter_uri: str,
    base_uri: str | None = None,
    *,
    merge: bool = False,
    max_lora_rank: int | None = None,
    publish: str | None = None,
) -> WorkerResult:
    adapter_dir = storage.fetch(adapter_uri)
    adapter = Adapter.load(adapter_dir)
    base_dir = storage.fetch(base_uri) if base_uri else None
    problems = compatibility(adapter, base_dir, merge=merge, max_lora_rank=max_lora_rank)
    if max_lora_rank is None and adapter.max_rank() not in VLLM_LORA_RANKS:
        log.info(
            "rank %d: vLLM's max-lora-rank must be set to the next of %s", adapter.max_rank(), VLLM_LORA_RANKS
        )
    manifest = storage.read_manifest(adapter_dir)
    size = sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    digest = storage.digest_of(adapter_dir)
    uri = adapter_uri
    if publish and not problems:
        uri = publish_adapter(adapter_dir, adapter_uri, digest, publish)
    artifact = ArtifactResult(
        uri=uri,
        digest=digest,
        size_bytes=manifest.size_bytes if manifest else size,
        format="peft",
    )
    for p in problems:
        log.warning("problem: %s", p)
    return WorkerResult(artifact=artifact, adapter=adapter.facts(), problems=problems)
