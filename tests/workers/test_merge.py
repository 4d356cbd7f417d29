"""Merge: the streaming merge equals peft's merge_and_unload bit for bit, and the merged model behaves like
base + adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.workers.conftest import run_cli
from tuneops.workers.merge import resolve_dtype, run_merge
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

pytestmark = pytest.mark.workers

# merged-model logits vs the unmerged adapter model (measured: ~7e-7 fp32, ~1e-3 fp16, ~1e-2 bf16)
LOGIT_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


CASES = [
    ("llama", "llama-lora"),
    ("llama", "llama-rich"),  # rank/alpha patterns, embedding LoRA, modules_to_save
    ("mistral", "mistral-lora"),
    ("mistral", "mistral-rslora"),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("base", "adapter"), CASES)
def test_stream_equals_peft_bit_for_bit(
    models: dict[str, Path], tmp_path: Path, base: str, adapter: str, dtype: str
) -> None:
    s = run_merge(str(models[base]), str(models[adapter]), str(tmp_path / "s"), dtype=dtype, method="stream")
    p = run_merge(str(models[base]), str(models[adapter]), str(tmp_path / "p"), dtype=dtype, method="peft")
    assert s.method == "stream" and p.method == "peft"
    ts, tp = tensors(tmp_path / "s"), tensors(tmp_path / "p")
    base_t = tensors(models[base])
    assert set(ts) == set(tp)
    want = getattr(torch, dtype)
    changed = 0
    for k in ts:
        assert ts[k].dtype == tp[k].dtype == want, k
        assert torch.equal(ts[k], tp[k]), f"{k} differs from peft's merge"
        changed += not torch.equal(ts[k], base_t[k].to(want))
    # every targeted projection changed (B is non-zero), so the equality above is not vacuous
    assert changed >= 8
    # sharded like the base, loadable, config dtype updated, tokenizer copied
    assert len(list((tmp_path / "s").glob("*.safetensors"))) == len(list(models[base].glob("*.safetensors")))
    assert json.loads((tmp_path / "s" / "config.json").read_text())["dtype"] == dtype
    assert (tmp_path / "s" / "tokenizer.model").is_file() and (
        tmp_path / "s" / "generation_config.json"
    ).is_file()


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("base", "adapter"), [("llama", "llama-rich"), ("mistral", "mistral-rslora")])
def test_merged_logits_match_adapter_model(
    models: dict[str, Path], tmp_path: Path, base: str, adapter: str, dtype: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_merge(str(models[base]), str(models[adapter]), str(tmp_path / "m"), dtype=dtype)
    td = getattr(torch, dtype)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=td)
    assert merged.dtype == td
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(models[base]), dtype=td), str(models[adapter])
    )
    plain = AutoModelForCausalLM.from_pretrained(str(models[base]), dtype=td)
    ids = torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    lm, la, lb = _logits(merged, ids), _logits(with_adapter, ids), _logits(plain, ids)
    diff = (lm - la).abs().max().item()
    assert diff <= LOGIT_TOL[dtype], diff
    # the adapter matters far more than the tolerance
    assert (lb - la).abs().max().item() > 20 * LOGIT_TOL[dtype]


def test_dora_falls_back_to_peft(models: dict[str, Path], tmp_path: Path) -> None:
    r = run_merge(str(models["llama"]), str(models["llama-dora"]), str(tmp_path / "d"), dtype="float32")
    assert r.method == "peft"
    p = run_merge(
        str(models["llama"]), str(models["llama-dora"]), str(tmp_path / "p"), dtype="float32", method="peft"
    )
    assert r.artifact is not None and p.artifact is not None
    td, tp = tensors(tmp_path / "d"), tensors(tmp_path / "p")
    assert all(torch.equal(td[k], tp[k]) for k in tp)


@pytest.mark.parametrize(
    ("config", "chosen"),
    [
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float32"}, "float32"),  # written by transformers before 5
        ({"torch_dtype": "torch.bfloat16"}, "bfloat16"),
        ({}, "float16"),
        ({"dtype": "float8_e4m3fn"}, "float16"),
    ],
)
def test_auto_dtype_is_the_base_models(config: dict[str, Any], chosen: str) -> None:
    assert resolve_dtype("auto", {"model_type": "llama", **config}) == chosen
    assert resolve_dtype("float32", {"dtype": "bfloat16"}) == "float32"  # asked for explicitly


def test_auto_dtype_keeps_a_bfloat16_base_in_bfloat16(tmp_path: Path) -> None:
    base = make_model(tmp_path / "bf16", TinyModelSpec(dtype="bfloat16", seed=7))
    adapter = make_adapter(base, tmp_path / "bf16-lora", TinyAdapterSpec(seed=8))
    result = run_merge(str(base), str(adapter), str(tmp_path / "m"))
    assert result.dtype == "bfloat16", "the dtype used is in the step's result"
    manifest = json.loads((tmp_path / "m" / "tuneops-artifact.json").read_text())
    assert manifest["parameters"]["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in tensors(tmp_path / "m").values() if t.is_floating_point()} == {torch.bfloat16}


def test_cli_merge_reports_and_reuses(models: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    out = tmp_path / "merged"
    args = (
        "merge",
        "--base",
        str(models["llama"]),
        "--adapter",
        str(models["llama-lora"]),
        "--output",
        f"file://{out}",
    )
    env = {"TUNEOPS_TERMINATION_LOG": str(log)}
    first = run_cli(*args, "--dtype", "bfloat16", env=env)
    assert first.returncode == 0, first.stderr
    msg = json.loads(log.read_text())
    art = msg["artifact"]
    assert (
        art["uri"] == f"file://{out}"
        and art["format"] == "safetensors"
        and art["digest"].startswith("sha256:")
    )
    assert art["sizeBytes"] == sum(
        f.stat().st_size for f in out.iterdir() if f.name != "tuneops-artifact.json"
    )
    assert msg["method"] == "stream" and msg["dtype"] == "bfloat16" and "reused" not in art
    assert len(log.read_bytes()) < 4096
    manifest = json.loads((out / "tuneops-artifact.json").read_text())
    assert manifest["digest"] == art["digest"] and manifest["parameters"] == {
        "dtype": "bfloat16",
        "method": "stream",
    }
    assert set(manifest["inputs"]) == {"base", "adapter"} and "peft" in manifest["tools"]
    mtime = (out / "tuneops-artifact.json").stat().st_mtime_ns
    again = run_cli(*args, "--dtype", "bfloat16", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(log.read_text())["artifact"]["reused"] is True
    assert (out / "tuneops-artifact.json").stat().st_mtime_ns == mtime, "a complete artifact is not rewritten"
    other = run_cli(*args, "--dtype", "float32", env=env)
    assert other.returncode == 0 and "reused" not in json.loads(log.read_text())["artifact"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dtype", "float16", "--adapter", "{wide-lora}", "--base", "{llama}"), "shape mismatch"),
        (("--adapter", "{llama-lora}", "--base", "pvc://claim/../x"), "path traversal"),
        (("--adapter", "{llama-lora}", "--base", "gs://b/x"), "unsupported scheme"),
        (("--adapter", "{llama-lora}", "--base", "/nonexistent/model"), "does not exist"),
    ],
)
def test_cli_invalid_input_exits_2(
    models: dict[str, Path], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    log = tmp_path / "log"
    filled = [a.format(**{k: str(v) for k, v in models.items()}) if a.startswith("{") else a for a in args]
    r = run_cli("merge", "--output", str(tmp_path / "o"), *filled, env={"TUNEOPS_TERMINATION_LOG": str(log)})
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert message in json.loads(log.read_text())["error"]
    assert not (tmp_path / "o").exists()


def test_default_termination_log_outside_a_pod_is_skipped(models: dict[str, Path]) -> None:
    default = Path("/dev/termination-log")
    existed = default.exists()
    env = {k: v for k, v in os.environ.items() if k != "TUNEOPS_TERMINATION_LOG"}
    r = run_cli("inspect", "--adapter", str(models["llama-lora"]), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["adapter"]["rank"] == 8
    assert default.exists() == existed, "the worker must not create /dev/termination-log outside a Pod"
