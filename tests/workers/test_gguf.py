"""GGUF: llama.cpp's converter and quantizer; every file loads in llama.cpp and tracks the HF model's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.workers.conftest import run_cli
from tuneops.workers.evaluate import gguf_logits, hf_logits, tokenize

pytestmark = pytest.mark.workers

TYPES = ["F16", "Q8_0", "Q4_K_M"]
# (max |logit diff| vs HF fp32, min top-1 agreement); measured on the tiny model: 9e-4/1.0, 2e-2/1.0, 0.16/0.8
TOLERANCE = {"F16": (3e-3, 0.98), "Q8_0": (6e-2, 0.9), "Q4_K_M": (0.4, 0.6)}


@pytest.fixture(scope="module")
def gguf_dir(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gguf")
    args = ["quantize-gguf", "--source", str(models["llama"]), "--output", str(root / "out")]
    for t in TYPES:
        args += ["--type", t]
    r = run_cli(*args, "--outtype", "f16", env={"TUNEOPS_TERMINATION_LOG": str(root / "log")})
    assert r.returncode == 0, r.stderr[-3000:]
    msg = json.loads((root / "log").read_text())
    assert msg["artifact"]["files"] == [f"model-{t}.gguf" for t in TYPES]
    assert msg["artifact"]["format"] == "gguf"
    return root / "out"


def test_artifact_holds_one_file_per_type(gguf_dir: Path) -> None:
    names = sorted(p.name for p in gguf_dir.iterdir())
    assert names == sorted([*(f"model-{t}.gguf" for t in TYPES), "tuneops-artifact.json"])
    sizes = {t: (gguf_dir / f"model-{t}.gguf").stat().st_size for t in TYPES}
    assert sizes["F16"] > sizes["Q8_0"] > sizes["Q4_K_M"]
    manifest = json.loads((gguf_dir / "tuneops-artifact.json").read_text())
    assert manifest["notable"] == [f"model-{t}.gguf" for t in TYPES]
    assert manifest["tools"]["llama.cpp"] == "0.3.36"


def test_file_metadata(gguf_dir: Path) -> None:
    import sys

    from tuneops import toolpaths

    sys.path.insert(0, str(toolpaths.llamacpp_dir() / "gguf-py"))
    try:
        from gguf import GGUFReader
    finally:
        sys.path.pop(0)
    r = GGUFReader(str(gguf_dir / "model-Q4_K_M.gguf"))
    fields = {f.name: f for f in r.fields.values()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert "tokenizer.chat_template" in fields
    assert bytes(fields["tokenizer.ggml.model"].parts[-1]).decode() == "llama"  # SentencePiece vocabulary
    kinds = {t.tensor_type.name for t in r.tensors}
    assert {"Q4_K", "Q6_K"} & kinds, kinds


@pytest.mark.parametrize("qtype", TYPES)
def test_llamacpp_logits_track_hf(gguf_dir: Path, models: dict[str, Path], qtype: str) -> None:
    text = "The quantized model reads one shard at a time so that nothing is lost after a crash. " * 3
    ids, bos = tokenize(text, models["llama"], None)
    seqs = [[bos, *ids[:80]]]
    hf = hf_logits(models["llama"], seqs)[0]
    gg = gguf_logits(gguf_dir / f"model-{qtype}.gguf", seqs)[0]
    other = hf_logits(models["mistral"], seqs)[0]
    assert gg.shape == hf.shape == (81, 512)
    max_diff, min_top1 = TOLERANCE[qtype]
    diff = float(np.abs(gg - hf).max())
    top1 = float((gg.argmax(-1) == hf.argmax(-1)).mean())
    assert diff <= max_diff, diff
    assert top1 >= min_top1, top1
    # an unrelated model is far outside the tolerance, so the check has teeth
    assert float(np.abs(other - hf).max()) > 2 * max_diff


def test_rerun_reuses_and_bad_type_is_invalid(
    gguf_dir: Path, models: dict[str, Path], tmp_path: Path
) -> None:
    log = tmp_path / "log"
    args = ["quantize-gguf", "--source", str(models["llama"]), "--output", str(gguf_dir)]
    for t in TYPES:
        args += ["--type", t]
    r = run_cli(*args, env={"TUNEOPS_TERMINATION_LOG": str(log)})
    assert r.returncode == 0 and json.loads(log.read_text())["artifact"]["reused"] is True
    bad = run_cli("quantize-gguf", "--source", str(models["llama"]), "--output", str(tmp_path / "o"),
                  "--type", "Q9_X", env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert bad.returncode == 2 and "unknown GGUF type(s) Q9_X" in bad.stderr
