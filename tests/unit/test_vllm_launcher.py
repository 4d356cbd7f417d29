"""The vLLM launcher of the ConfigMap: each startup adapter is checked as vLLM would and a failing one left out,
so one bad adapter never stops the server. Checks run against real adapter folders written here (safetensors
headers and adapter_config.json); the launcher runs for real against a stand-in vLLM module."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneops.render.serving.vllm import LAUNCHER
from tuneops.serving import launcher

HIDDEN, INTER = 64, 128
TARGETS = ("q_proj", "v_proj")


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A safetensors file with zero-filled tensors of the given dtypes and shapes."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4}
    header: dict[str, Any] = {}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = sizes[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def base_model(root: Path, hidden: int = HIDDEN, sharded: bool = True) -> Path:
    d = root / "base"
    d.mkdir(parents=True)
    tensors = {
        f"model.layers.0.self_attn.{m}.weight": ("BF16", [hidden, hidden]) for m in ("q_proj", "v_proj")
    }
    tensors["model.layers.0.mlp.up_proj.weight"] = ("BF16", [INTER, hidden])
    if sharded:
        names = sorted(tensors)
        write_safetensors(d / "model-1.safetensors", {n: tensors[n] for n in names[:1]})
        write_safetensors(d / "model-2.safetensors", {n: tensors[n] for n in names[1:]})
        weight_map = {
            n: ("model-1.safetensors" if i < 1 else "model-2.safetensors") for i, n in enumerate(names)
        }
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    else:
        write_safetensors(d / "model.safetensors", tensors)
    (d / "config.json").write_text("{}")
    return d


def adapter(
    root: Path,
    name: str,
    r: int = 8,
    hidden: int = HIDDEN,
    targets: tuple[str, ...] = TARGETS,
    weights: bool = True,
    **config: Any,
) -> Path:
    d = root / name
    d.mkdir(parents=True)
    body = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": list(targets), **config}
    (d / "adapter_config.json").write_text(json.dumps(body))
    if weights:
        tensors: dict[str, tuple[str, list[int]]] = {}
        for m in targets:
            key = f"base_model.model.model.layers.0.self_attn.{m}"
            tensors[f"{key}.lora_A.weight"] = ("F32", [r, hidden])
            tensors[f"{key}.lora_B.weight"] = ("F32", [hidden, r])
        write_safetensors(d / "adapter_model.safetensors", tensors)
    return d


def problems(path: Path, base: Path | None, max_rank: int = 16) -> str:
    shapes = launcher.model_shapes(str(base)) if base else None
    return "; ".join(launcher.check({"name": "x", "path": str(path)}, max_rank, shapes))


@pytest.mark.parametrize(
    ("what", "make", "max_rank", "fragment"),
    [
        ("a good adapter", lambda r: adapter(r, "ok"), 16, ""),
        ("rank above --max-lora-rank", lambda r: adapter(r, "big", r=32), 16,
         "LoRA rank 32 is greater than --max-lora-rank 16"),
        ("rank_pattern above --max-lora-rank", lambda r: adapter(r, "pat", rank_pattern={"q_proj": 64}), 16,
         "LoRA rank 64 is greater than --max-lora-rank 16"),
        ("rank at --max-lora-rank", lambda r: adapter(r, "eq", r=16), 16, ""),
        ("missing folder", lambda r: r / "nope", 16, "does not exist"),
        ("a file, not a folder", lambda r: (r / "f").with_suffix(".txt"), 16, "does not exist"),
        ("no adapter_config.json", lambda r: (r / "empty").mkdir() or r / "empty", 16, "has no adapter_config.json"),
        ("no weights", lambda r: adapter(r, "now", weights=False), 16, "has no weights"),
        ("not a LoRA config", lambda r: _write(r / "nolora", "{}"), 16, "lacks lora_alpha, r, target_modules"),
        ("broken JSON", lambda r: _write(r / "broken", "{"), 16, "cannot read"),
        ("DoRA", lambda r: adapter(r, "dora", use_dora=True), 16, "DoRA"),
        ("modules_to_save", lambda r: adapter(r, "mts", modules_to_save=["lm_head"]), 16, "modules_to_save"),
        ("another PEFT method", lambda r: adapter(r, "ia3", peft_type="IA3"), 16, "LoRA adapters only"),
        ("trained for another base (other hidden size)", lambda r: adapter(r, "other", hidden=32), 16,
         "trained for another base model: model.layers.0.self_attn.q_proj is 32x32 in the adapter, 64x64"),
        ("targets modules the base lacks", lambda r: adapter(r, "gpt2", targets=("c_attn",)), 16,
         "targets modules the base model does not have: c_attn"),
    ],
)  # fmt: skip
def test_adapter_checks(tmp_path: Path, what: str, make: Any, max_rank: int, fragment: str) -> None:
    base = base_model(tmp_path / "m")
    got = problems(make(tmp_path), base, max_rank)
    if fragment:
        assert fragment in got, f"{what}: {got}"
    else:
        assert got == "", f"{what}: {got}"


def _write(d: Path, config: str) -> Path:
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text(config)
    return d


def test_unsharded_base_and_unknown_base(tmp_path: Path) -> None:
    good, other = adapter(tmp_path, "ok"), adapter(tmp_path, "other", hidden=32)
    base = base_model(tmp_path / "single", sharded=False)
    assert problems(good, base) == ""
    assert "another base model" in problems(other, base)
    # a base that is not a local safetensors checkpoint (a Hub id, GGUF, a quantized layout): shapes unchecked
    assert problems(other, None) == ""


def test_quantized_base_weights_are_not_compared(tmp_path: Path) -> None:
    d = tmp_path / "awq"
    d.mkdir()
    write_safetensors(d / "model.safetensors", {
        "model.layers.0.self_attn.q_proj.weight": ("I32", [HIDDEN, HIDDEN // 8]),
        "model.layers.0.self_attn.v_proj.weight": ("I32", [HIDDEN, HIDDEN // 8]),
    })  # fmt: skip
    assert problems(adapter(tmp_path, "ok"), d) == ""


@pytest.mark.parametrize(
    ("args", "rank"),
    [
        (["--model", "m"], 16),
        (["--max-lora-rank", "8"], 8),
        (["--max-lora-rank", "8", "--max-lora-rank=64"], 64),
        (["--max_lora_rank", "32"], 32),
    ],
)
def test_max_lora_rank_is_the_last_one_given(args: list[str], rank: int) -> None:
    assert launcher.max_lora_rank(args) == rank


def test_hub_adapter_that_cannot_be_fetched_is_left_out(tmp_path: Path) -> None:
    # In a process of its own: huggingface_hub reads HF_HUB_OFFLINE once, when first imported, and would keep
    # this test's offline mode for every later test of the session.
    code = (
        "import json, sys; from tuneops.serving import launcher; "
        "print(json.dumps(launcher.check({'name': 'sql', 'path': 'acme/not-cached-lora'}, 16, None)))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got and "cannot fetch adapter_config.json of Hugging Face repo acme/not-cached-lora" in got[0]


def fake_vllm(root: Path) -> None:
    pkg = root / "vllm" / "entrypoints" / "openai"
    pkg.mkdir(parents=True)
    for d in (root / "vllm", root / "vllm" / "entrypoints", pkg):
        (d / "__init__.py").write_text("")
    (pkg / "api_server.py").write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")


def test_launcher_starts_vllm_with_the_adapters_that_pass(tmp_path: Path) -> None:
    """The ConfigMap's launch.py (the module's own source), run for real: the good adapter goes into
    --lora-modules at TUNEOPS_LORA_ARGS_AT, the bad ones are left out and named on stderr and in the report."""
    fake_vllm(tmp_path / "py")
    base = base_model(tmp_path / "m")
    good, big = adapter(tmp_path, "good"), adapter(tmp_path, "big", r=32)
    modules = [{"name": n, "path": str(p), "base_model_name": "tiny"}
               for n, p in (("good", good), ("big", big), ("gone", tmp_path / "gone"))]  # fmt: skip
    (tmp_path / "lora.json").write_text(json.dumps(modules))
    (tmp_path / "launch.py").write_text(LAUNCHER)
    args = ["--model", str(base), "--enable-lora", "--max-lora-rank", "16", "--shutdown-timeout", "30"]
    env = {"PYTHONPATH": str(tmp_path / "py"), "TUNEOPS_LORA_MODULES_FILE": str(tmp_path / "lora.json"),
           "TUNEOPS_LORA_ARGS_AT": "4", "TMPDIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    run = subprocess.run([sys.executable, str(tmp_path / "launch.py"), *args], env=env, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    argv = json.loads(run.stdout.strip().splitlines()[-1])
    lora = json.dumps(modules[0], separators=(",", ":"))
    assert argv == [*args[:4], "--lora-modules", lora, *args[4:]]
    assert "tuneops: starting vLLM with 1 of 3 startup adapter(s)" in run.stdout
    assert "tuneops: adapter big left out of --lora-modules: LoRA rank 32 is greater than" in run.stderr
    assert (
        f"tuneops: adapter gone left out of --lora-modules: adapter path {tmp_path / 'gone'} does not exist"
        in (run.stderr)
    )
    report = json.loads((tmp_path / launcher.REPORT_FILE).read_text())
    assert report["loaded"] == ["good"] and set(report["leftOut"]) == {"big", "gone"}


def test_launcher_with_every_adapter_left_out_still_starts_the_base_model(tmp_path: Path) -> None:
    fake_vllm(tmp_path / "py")
    (tmp_path / "lora.json").write_text(json.dumps([{"name": "gone", "path": "/nonexistent/adapter"}]))
    (tmp_path / "launch.py").write_text(LAUNCHER)
    missing_model = tmp_path / "models" / "tiny-typo"
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    args = ["--model", str(missing_model), "--enable-lora"]
    env = {"PYTHONPATH": str(tmp_path / "py"), "TUNEOPS_LORA_MODULES_FILE": str(tmp_path / "lora.json"),
           "TMPDIR": str(tmp_path)}  # fmt: skip
    run = subprocess.run([sys.executable, str(tmp_path / "launch.py"), *args], env=env, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    assert json.loads(run.stdout.strip().splitlines()[-1]) == args
    # vLLM would take the missing path for a Hub repo id; the launcher says what it is first
    assert (
        f"tuneops: model path {missing_model} does not exist; {tmp_path / 'models'} holds: tiny" in run.stderr
    )


def test_launcher_in_the_configmap_is_the_module_source() -> None:
    assert Path(launcher.__file__).read_text(encoding="utf-8") == LAUNCHER
    assert "import tuneops" not in LAUNCHER and "from tuneops" not in LAUNCHER, "runs in the vLLM image"
