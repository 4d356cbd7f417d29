"""AWQ with llm-compressor: compressed-tensors output that transformers reloads close to the source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.workers.conftest import run_cli
from tuneops.workers.awq import calibration_texts
from tuneops.workers.common import InvalidInput

pytestmark = pytest.mark.workers


@pytest.fixture(scope="module")
def awq_model(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("awq")
    cal = root / "calibration.jsonl"
    cal.write_text("\n".join(json.dumps({"text": t}) for t in calibration_texts(None)[:200]) + "\n")
    out = root / "model-awq"
    r = run_cli(
        "quantize-awq",
        "--source", str(models["llama"]),
        "--output", str(out),
        "--calibration", str(cal),
        "--samples", "16",
        "--max-seq-len", "128",
        "--group-size", "128",
        env={"TUNEOPS_TERMINATION_LOG": str(root / "log")},
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    msg = json.loads((root / "log").read_text())
    assert msg["artifact"]["format"] == "compressed-tensors"
    return out


def test_output_is_compressed_tensors_w4(awq_model: Path) -> None:
    cfg = json.loads((awq_model / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors"
    assert qc["format"] == "pack-quantized"
    w = qc["config_groups"]["group_0"]["weights"]
    assert (w["num_bits"], w["group_size"], w["symmetric"]) == (4, 128, False)
    assert "lm_head" in qc["ignore"]
    manifest = json.loads((awq_model / "tuneops-artifact.json").read_text())
    assert manifest["parameters"]["samples"] == 16 and "calibration" in manifest["inputs"]
    assert "llmcompressor" in manifest["tools"]


def test_reloads_with_transformers_close_to_source(awq_model: Path, models: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    q = AutoModelForCausalLM.from_pretrained(str(awq_model))
    src = AutoModelForCausalLM.from_pretrained(str(models["llama"]))
    other = AutoModelForCausalLM.from_pretrained(str(models["mistral"]))
    tok = AutoTokenizer.from_pretrained(str(awq_model))
    ids = tok("The operator checks the digest of each file so that nothing is lost.", return_tensors="pt")
    with torch.inference_mode():
        lq, ls, lo = (m(input_ids=ids["input_ids"]).logits for m in (q, src, other))
    diff = (lq - ls).abs()
    # measured on this tiny random model: max ~0.2, mean ~0.05; an unrelated model is ~5x further away
    assert diff.max().item() < 0.5
    assert diff.mean().item() < 0.5 * (lo - ls).abs().mean().item()
    assert not torch.equal(lq, ls), "4-bit weights cannot reproduce the source exactly"


def test_autoawq_backend_without_its_environment_is_a_clear_error(
    models: dict[str, Path], tmp_path: Path
) -> None:
    try:
        import awq  # noqa: F401

        has_awq = True
    except ImportError:
        has_awq = False
    if has_awq:
        return  # the opt-in environment is present: nothing to refuse
    r = run_cli(
        "quantize-awq", "--source", str(models["llama"]), "--output", str(tmp_path / "o"), "--backend", "autoawq",
        env={"TUNEOPS_TERMINATION_LOG": str(tmp_path / "log")},
    )  # fmt: skip
    assert r.returncode == 2
    assert "AutoAWQ environment" in r.stderr
    assert not (tmp_path / "o").exists()


def test_calibration_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "ok"}\n{"other": 1}\n')
    with pytest.raises(InvalidInput, match="line 2 has no string field 'text'"):
        calibration_texts(bad)
    txt = tmp_path / "c.txt"
    txt.write_text("first paragraph\n\nsecond paragraph\n")
    assert calibration_texts(txt) == ["first paragraph", "second paragraph\n"]


def test_quality_gate_reads_compressed_tensors(awq_model: Path, models: dict[str, Path]) -> None:
    from tuneops.workers.evaluate import run_evaluate

    r = run_evaluate(str(awq_model), str(models["llama"]), samples=4, max_seq_len=64, max_increase_pct=5.0)
    assert r.artifact is not None and r.artifact.format == "compressed-tensors"
    assert r.metrics is not None and r.metrics.tokens == 4 * 63
    assert r.passed is True, r.metrics
