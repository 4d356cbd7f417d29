"""Inspect: adapter facts and the problems a person must fix before merging or serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workers.conftest import run_cli
from tuneops.workers.inspect import run_inspect

pytestmark = pytest.mark.workers


def test_facts_of_a_rich_adapter(models: dict[str, Path]) -> None:
    r = run_inspect(str(models["llama-rich"]), str(models["llama"]), merge=True)
    assert r.problems == []
    a = r.adapter
    assert a is not None
    assert (a.type, a.rank, a.alpha, a.rs_lora) == ("LORA", 8, 16.0, False)
    assert a.target_modules == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "embed_tokens"])
    assert a.modules_to_save == ["lm_head"]
    assert a.max_rank == 16  # from rank_pattern
    assert a.base_model_name == str(models["llama"])
    assert r.artifact is not None and r.artifact.format == "peft" and r.artifact.digest.startswith("sha256:")


def test_rslora_flag(models: dict[str, Path]) -> None:
    a = run_inspect(str(models["mistral-rslora"])).adapter
    assert a is not None and a.rs_lora is True and a.rank == 16


@pytest.mark.parametrize(
    ("adapter", "base", "merge", "max_rank", "expected"),
    [
        ("llama-lora", "llama", False, None, []),
        ("llama-dora", "llama", True, None, ["DoRA adapter"]),
        ("llama-dora", "llama", False, None, []),
        ("llama-rich", "llama", False, 8, ["adapter rank 16 is above max-lora-rank 8"]),
        ("wide-lora", "llama", False, None, ["shape mismatch at model.layers.0.self_attn.q_proj"]),
    ],
)
def test_problems(
    models: dict[str, Path], adapter: str, base: str, merge: bool, max_rank: int | None, expected: list[str]
) -> None:
    r = run_inspect(str(models[adapter]), str(models[base]), merge=merge, max_lora_rank=max_rank)
    assert r.problems is not None
    for e in expected:
        assert any(p.startswith(e) for p in r.problems), (e, r.problems)
    if not expected:
        assert r.problems == []


def test_missing_module_in_base(models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    # Rename one targeted weight in a copy of the base: the adapter's module no longer exists there.
    base = tmp_path / "base"
    shutil.copytree(models["llama"], base)
    index = json.loads((base / "model.safetensors.index.json").read_text())
    key = "model.layers.1.self_attn.q_proj.weight"
    shard = base / index["weight_map"].pop(key)
    t = load_file(str(shard))
    t["model.layers.1.self_attn.q_renamed.weight"] = t.pop(key)
    save_file(t, str(shard), metadata={"format": "pt"})
    r = run_inspect(str(models["llama-lora"]), str(base))
    assert r.problems == ["target module model.layers.1.self_attn.q_proj not found in the base model"]


def test_cli_inspect_termination_message(models: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log"
    r = run_cli(
        "inspect",
        "--adapter",
        f"file://{models['llama-dora']}",
        "--base",
        str(models["llama"]),
        "--merge",
        env={"TUNEOPS_TERMINATION_LOG": str(log)},
    )
    assert r.returncode == 0, r.stderr
    msg = json.loads(log.read_text())
    assert set(msg) == {"artifact", "adapter", "problems"}
    assert set(msg["adapter"]) >= {
        "type",
        "rank",
        "alpha",
        "rsLora",
        "targetModules",
        "modulesToSave",
        "baseModelName",
    }
    assert msg["adapter"]["useDora"] is True
    assert msg["problems"][0].startswith("DoRA adapter")


def test_cli_inspect_not_an_adapter(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = run_cli(
        "inspect", "--adapter", str(tmp_path / "empty"), env={"TUNEOPS_TERMINATION_LOG": str(tmp_path / "l")}
    )
    assert r.returncode == 2
    assert "adapter_config.json not found" in r.stderr
