"""The vLLM server container's launcher: checks each startup adapter, then execs vLLM's OpenAI server.

vLLM exits when one `--lora-modules` entry fails to load, taking the base model and every other adapter down with
it. This launcher (shipped in the InferenceService's ConfigMap as `launch.py` and run with the image's python3, so
it uses the standard library only) reads the adapter list the operator wrote, checks each adapter the way vLLM
would (its folder, adapter_config.json, weights, rank against `--max-lora-rank`, the features vLLM refuses, and
where cheap that its modules exist in the base model with the same shapes) and leaves out those that would fail.
Each left-out adapter is named with its reason on stderr and in `$TMPDIR/tuneops-lora-startup.json`; the base
model always starts. The operator's adapter reconciler then sees the adapter missing from /v1/models, loads it
through vLLM's runtime API and reports vLLM's own refusal (AdapterLoadFailed).

Adapters that are Hugging Face repo ids (hf:// in the spec: vLLM downloads them) are checked through
huggingface_hub when the image has it: adapter_config.json is fetched into the same cache vLLM reads; one that
cannot be fetched is left out as well (vLLM would fail to fetch it too).
"""

from __future__ import annotations

import json
import os
import re
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
REPORT_FILE = "tuneops-lora-startup.json"
# vLLM's LoRAConfig.max_lora_rank when --max-lora-rank is not given.
DEFAULT_MAX_LORA_RANK = 16
CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
# Bounds on what is read from files a tenant may have written.
CONFIG_LIMIT = 1 << 20
HEADER_LIMIT = 64 << 20
SHARD_LIMIT = 512
# vLLM's PEFTHelper: modules_to_save only for classification heads; these init_lora_weights only.
SAVED_MODULES_OK = frozenset({"classifier", "score"})
INITS_OK = frozenset({"gaussian", "eva", "orthogonal", "mica", "lora_ga"})
# Modules vLLM does not match against the model's LoRA targets (embeddings, the head, PEFT's expert layout).
UNCHECKED_MODULES = frozenset({"embed_tokens", "lm_head", "base_layer", "experts"})
# Unquantized floating-point dtypes: only such base weights have the [out, in] shape a LoRA pair must match.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")

Shapes = dict[str, tuple[str, list[int]]]


def flag(args: Sequence[str], name: str) -> str | None:
    """The value of the last `--name V` or `--name=V` in `args` (vLLM accepts `_` for `-` as well)."""
    names = {name, "--" + name.lstrip("-").replace("-", "_")}
    value: str | None = None
    for i, arg in enumerate(args):
        key, eq, rest = arg.partition("=")
        if key in names:
            if eq:
                value = rest
            elif i + 1 < len(args):
                value = args[i + 1]
    return value


def max_lora_rank(args: Sequence[str]) -> int:
    value = flag(args, "--max-lora-rank")
    try:
        return int(value) if value is not None else DEFAULT_MAX_LORA_RANK
    except ValueError:
        return DEFAULT_MAX_LORA_RANK


def safetensors_shapes(path: str) -> Shapes:
    """Tensor name -> (dtype, shape) from a safetensors file's header; nothing else of the file is read."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path} is not a safetensors file (shorter than its header)")
        (size,) = struct.unpack("<Q", head)
        if size > HEADER_LIMIT:
            raise ValueError(f"{path}: safetensors header of {size} bytes is implausibly large")
        header = json.loads(fh.read(size))
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    out: Shapes = {}
    for name, info in header.items():
        if name != "__metadata__" and isinstance(info, dict):
            out[str(name)] = (str(info.get("dtype", "")), [int(d) for d in info.get("shape") or []])
    return out


def model_shapes(model: str) -> Shapes | None:
    """The base model's tensors when it is a local safetensors checkpoint (sharded or not), else None."""
    if not os.path.isdir(model):
        return None
    index = os.path.join(model, "model.safetensors.index.json")
    try:
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as fh:
                weight_map = json.loads(fh.read(HEADER_LIMIT)).get("weight_map") or {}
            shards = sorted({str(f) for f in weight_map.values()})
            if len(shards) > SHARD_LIMIT or any(os.sep in s or s.startswith(".") for s in shards):
                return None
        elif os.path.isfile(os.path.join(model, "model.safetensors")):
            shards = ["model.safetensors"]
        else:
            return None
        shapes: Shapes = {}
        for shard in shards:
            shapes.update(safetensors_shapes(os.path.join(model, shard)))
        return shapes
    except (OSError, ValueError, AttributeError, struct.error):
        return None


def read_config(path: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        raw = fh.read(CONFIG_LIMIT + 1)
    if len(raw) > CONFIG_LIMIT:
        raise ValueError(f"{path} is larger than {CONFIG_LIMIT} bytes")
    config = json.loads(raw)
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object")
    return config


def config_problems(config: Mapping[str, Any], max_rank: int) -> list[str]:
    """What vLLM's PEFTHelper would refuse in adapter_config.json, in its own terms where it has them."""
    missing = sorted({"r", "lora_alpha", "target_modules"} - set(config))
    if missing:
        return [f"adapter_config.json lacks {', '.join(missing)} (is it a LoRA adapter?)"]
    problems: list[str] = []
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type != "LORA":
        problems.append(f"peft_type is {peft_type}; vLLM serves LoRA adapters only")
    ranks = [config.get("r"), *dict(config.get("rank_pattern") or {}).values()]
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        return [*problems, f"LoRA rank must be a positive integer, got r={config.get('r')!r}"]
    if max(ranks) > max_rank:
        problems.append(
            f"LoRA rank {max(ranks)} is greater than --max-lora-rank {max_rank} (spec.lora.maxLoraRank)"
        )
    saved = [m for m in config.get("modules_to_save") or [] if m not in SAVED_MODULES_OK]
    if saved:
        problems.append(f"vLLM does not support modules_to_save {saved}")
    if config.get("use_dora"):
        problems.append("vLLM does not support DoRA (use_dora)")
    if config.get("lora_bias") or str(config.get("bias") or "none") != "none":
        problems.append("vLLM does not support LoRA bias")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in INITS_OK:
        problems.append(f"vLLM does not support init_lora_weights={init!r} (it changes the base weights)")
    for key, what in (("alora_invocation_tokens", "Activated LoRA"), ("layer_replication", "layer_replication"),
                      ("use_bdlora", "block-diagonal LoRA"), ("use_qalora", "QALoRA")):  # fmt: skip
        if config.get(key):
            problems.append(f"vLLM does not support {what}")
    return problems


def weight_problems(adapter: Shapes, base: Shapes | None, max_rank: int, saved: Sequence[str]) -> list[str]:
    """The adapter's weights against --max-lora-rank, and (given the base's tensors) its modules against the
    base model's: a module the base lacks, or a LoRA pair whose sides differ from the base weight's."""
    problems: list[str] = []
    modules: dict[str, dict[str, list[int]]] = {}
    for key, (_, shape) in adapter.items():
        m = _LORA_KEY.match(key)
        if m is not None and len(shape) == 2:
            modules.setdefault(m["module"], {})[m["ab"]] = shape
    ranks = [pair["A"][0] for pair in modules.values() if "A" in pair]
    if ranks and max(ranks) > max_rank:
        problems.append(f"LoRA rank {max(ranks)} (in the weights) is greater than --max-lora-rank {max_rank}")
    if base is None:
        return problems
    parts = {p for name in base for p in name.split(".")}
    absent: list[str] = []
    mismatched: list[str] = []
    for module, pair in sorted(modules.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf in UNCHECKED_MODULES or leaf in saved or ".experts" in module:
            continue
        if leaf not in parts:
            absent.append(leaf)
            continue
        dtype, shape = base.get(module + ".weight", ("", []))
        pair_known = dtype in FLOAT_DTYPES and len(shape) == 2 and "A" in pair and "B" in pair
        if pair_known and (pair["B"][0], pair["A"][1]) != (shape[0], shape[1]):
            sizes = f"{pair['B'][0]}x{pair['A'][1]} in the adapter, {shape[0]}x{shape[1]} in the model"
            mismatched.append(f"{module} is {sizes}")
    if absent:
        problems.append(
            f"targets modules the base model does not have: {', '.join(sorted(set(absent)))} (another base model?)"
        )
    if mismatched:
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        problems.append(f"was trained for another base model: {mismatched[0]}{more}")
    return problems


def local_problems(path: str, max_rank: int, base: Shapes | None) -> list[str]:
    if not os.path.exists(path):
        return [f"adapter path {path} does not exist"]
    if not os.path.isdir(path):
        return [f"adapter path {path} is not a folder"]
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        return [f"adapter path {path} has no {CONFIG_FILE}"]
    try:
        config = read_config(config_path)
    except (OSError, ValueError) as exc:
        return [f"cannot read {config_path}: {exc}"]
    problems = config_problems(config, max_rank)
    weights = [f for f in WEIGHT_FILES if os.path.isfile(os.path.join(path, f))]
    if not weights:
        return [*problems, f"adapter path {path} has no weights ({', '.join(WEIGHT_FILES)})"]
    if weights[0].endswith(".safetensors"):
        try:
            shapes = safetensors_shapes(os.path.join(path, weights[0]))
        except (OSError, ValueError, struct.error) as exc:
            return [*problems, f"cannot read {os.path.join(path, weights[0])}: {exc}"]
        if not any(_LORA_KEY.match(k) for k in shapes):
            return [*problems, f"{os.path.join(path, weights[0])} holds no LoRA weights"]
        saved = [str(m) for m in config.get("modules_to_save") or []]
        problems += weight_problems(shapes, base, max_rank, saved)
    return problems


def hub_problems(repo: str, max_rank: int) -> list[str]:
    """A Hugging Face repo id: fetch adapter_config.json (into the cache vLLM reads) and check it."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return []  # nothing to check with; vLLM will say
    parts = repo.split("/")
    repo_id, subfolder = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        config_path = hf_hub_download(repo_id, CONFIG_FILE, subfolder=subfolder)
        config = read_config(config_path)
    except Exception as exc:  # whatever the Hub or the network says, vLLM would fail the same way
        return [f"cannot fetch {CONFIG_FILE} of Hugging Face repo {repo}: {type(exc).__name__}: {exc}"]
    return config_problems(config, max_rank)


def check(module: Mapping[str, Any], max_rank: int, base: Shapes | None) -> list[str]:
    """Why vLLM would refuse this `--lora-modules` entry at startup (empty: start it)."""
    path = str(module.get("path") or "")
    if not path:
        return ["no path"]
    if os.path.isabs(path) or path.startswith("."):
        return local_problems(path, max_rank, base)
    return hub_problems(path, max_rank)


def select(
    modules: Sequence[Mapping[str, Any]], args: Sequence[str]
) -> tuple[list[Mapping[str, Any]], dict[str, str]]:
    """The startup adapters vLLM will load, and the left-out ones by name with why."""
    max_rank = max_lora_rank(args)
    model = flag(args, "--model") or ""
    base = model_shapes(model) if model else None
    keep: list[Mapping[str, Any]] = []
    left_out: dict[str, str] = {}
    for module in modules:
        problems = check(module, max_rank, base)
        if problems:
            left_out[str(module.get("name"))] = "; ".join(problems)
        else:
            keep.append(module)
    return keep, left_out


def report(keep: Sequence[Mapping[str, Any]], left_out: Mapping[str, str]) -> None:
    for name, why in left_out.items():
        print(f"tuneops: adapter {name} left out of --lora-modules: {why}", file=sys.stderr, flush=True)
    path = os.path.join(os.environ.get("TMPDIR") or "/tmp", REPORT_FILE)
    body = {"loaded": [str(m.get("name")) for m in keep], "leftOut": dict(left_out)}
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(body, fh, indent=1)
    except OSError:
        pass  # the report is a convenience; stderr has it all


def model_hint(args: Sequence[str]) -> None:
    """A local model path that does not exist: say so in plain words (vLLM would take it for a Hub repo id)."""
    model = flag(args, "--model") or ""
    if not os.path.isabs(model) or os.path.exists(model):
        return
    parent = os.path.dirname(model)
    while parent and parent != os.sep and not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    try:
        seen = sorted(os.listdir(parent))[:20] if parent and parent != os.sep else []
    except OSError:
        seen = []
    hint = f"; {parent} holds: {', '.join(seen)}" if seen else ""
    print(f"tuneops: model path {model} does not exist{hint}", file=sys.stderr, flush=True)


def launcher_argv(args: Sequence[str], modules: Sequence[Mapping[str, Any]], at: int) -> list[str]:
    lora = (
        ["--lora-modules", *(json.dumps(dict(m), separators=(",", ":")) for m in modules)] if modules else []
    )
    return [sys.executable, "-m", SERVER_MODULE, *args[:at], *lora, *args[at:]]


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    modules_file = os.environ.get("TUNEOPS_LORA_MODULES_FILE", "")
    at = int(os.environ.get("TUNEOPS_LORA_ARGS_AT", str(len(args))))
    modules: list[Mapping[str, Any]] = []
    if modules_file and os.path.exists(modules_file):
        with open(modules_file, encoding="utf-8") as fh:
            modules = json.load(fh)
    model_hint(args)
    keep, left_out = select(modules, args) if modules else ([], {})
    if modules:
        report(keep, left_out)
    print(f"tuneops: starting vLLM with {len(keep)} of {len(modules)} startup adapter(s)", flush=True)
    os.execv(sys.executable, launcher_argv(args, keep, at))


if __name__ == "__main__":
    main()
