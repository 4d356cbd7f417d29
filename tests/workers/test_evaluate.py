"""Quality gate: an honest quantization passes, a damaged model fails, on a briefly trained tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.workers.conftest import run_cli
from tuneops.workers.evaluate import run_evaluate
from tuneops.workers.tiny import TinyModelSpec, make_model

pytestmark = pytest.mark.workers


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A model trained for a few steps (perplexity well below the ~512 of random weights, so damage shows),
    its GGUF quantizations, and a copy with noise added to every projection."""
    root = tmp_path_factory.mktemp("trained")
    base = make_model(root / "base", TinyModelSpec(train_steps=40, seed=11))
    r = run_cli("quantize-gguf", "--source", str(base), "--output", str(root / "gguf"), "--type", "Q4_K_M",
                "--type", "Q2_K", env={"TUNEOPS_TERMINATION_LOG": str(root / "log")})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    damaged = root / "damaged"
    shutil.copytree(base, damaged)
    gen = torch.Generator().manual_seed(0)
    for f in damaged.glob("*.safetensors"):
        t = load_file(str(f))
        for k, v in t.items():
            if k.endswith("proj.weight"):
                t[k] = v + torch.randn(v.shape, generator=gen) * 0.05
        save_file(t, str(f), metadata={"format": "pt"})
    return {"base": base, "gguf": root / "gguf", "damaged": damaged}


def _evaluate(tmp_path: Path, model: str, reference: str, *extra: str) -> tuple[int, dict[str, object]]:
    log = tmp_path / "log"
    r = run_cli("evaluate", "--model", model, "--reference", reference, "--samples", "8", "--max-seq-len", "128",
                *extra, env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert r.returncode in (0, 3), r.stderr[-3000:]
    return r.returncode, json.loads(log.read_text())


def test_honest_gguf_quantization_passes(trained: dict[str, Path], tmp_path: Path) -> None:
    code, msg = _evaluate(tmp_path, str(trained["gguf"] / "model-Q4_K_M.gguf"), str(trained["base"]))
    assert code == 0 and msg["passed"] is True
    m = msg["metrics"]
    assert isinstance(m, dict)
    assert 1.0 < m["referencePerplexity"] < 60.0, "the trained model predicts its corpus well"
    assert abs(m["increasePct"]) < 5.0
    assert m["tokens"] == 8 * 127
    art = msg["artifact"]
    assert isinstance(art, dict) and art["format"] == "gguf" and art["digest"].startswith("sha256:")


def test_damaged_model_fails_the_gate(trained: dict[str, Path], tmp_path: Path) -> None:
    code, msg = _evaluate(tmp_path, str(trained["damaged"]), str(trained["base"]))
    assert code == 3 and msg["passed"] is False
    m = msg["metrics"]
    assert isinstance(m, dict) and m["increasePct"] > 20.0


def test_threshold_decides(trained: dict[str, Path]) -> None:
    """Q2_K costs a few percent here: a loose gate lets it through, a strict one does not."""
    q2 = str(trained["gguf"] / "model-Q2_K.gguf")
    loose = run_evaluate(q2, str(trained["base"]), samples=8, max_seq_len=128, max_increase_pct=50)
    assert loose.passed is True and loose.metrics is not None
    increase = loose.metrics.increase_pct
    assert increase > 0.5
    strict = run_evaluate(q2, str(trained["base"]), samples=8, max_seq_len=128, max_increase_pct=increase / 2)
    assert strict.passed is False


def test_dataset_from_jsonl(trained: dict[str, Path], tmp_path: Path) -> None:
    data = tmp_path / "eval.jsonl"
    rows = [{"text": "Rivers carry water from the mountains to the sea. " * 10} for _ in range(2)]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    q4 = str(trained["gguf"] / "model-Q4_K_M.gguf")
    given = run_evaluate(q4, str(trained["base"]), dataset_uri=str(data), samples=8, max_seq_len=128)
    default = run_evaluate(q4, str(trained["base"]), samples=8, max_seq_len=128)
    assert given.metrics is not None and default.metrics is not None
    assert given.metrics.reference_perplexity != default.metrics.reference_perplexity
    assert given.metrics.tokens is not None and given.metrics.tokens < default.metrics.tokens


def test_folder_with_several_gguf_files_is_ambiguous(trained: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("evaluate", "--model", str(trained["gguf"]), "--reference", str(trained["base"]),
                env={"TUNEOPS_TERMINATION_LOG": str(tmp_path / "log")})  # fmt: skip
    assert r.returncode == 2
    assert "several GGUF files" in r.stderr
