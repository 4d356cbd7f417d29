"""Quality gate: perplexity of a model and its reference on the same tokens (HF, compressed-tensors, GGUF)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneops import storage
from tuneops.workers.common import InvalidInput, thread_count
from tuneops.workers.corpus import default_text
from tuneops.workers.result import ArtifactResult, Metrics, WorkerResult

log = logging.getLogger("tuneops.workers.evaluate")

DEFAULT_MAX_INCREASE_PCT = 5.0


@dataclass(frozen=True)
class LoadedModel:
    """Where a model is and how to run it: an HF folder (incl. compressed-tensors) or a GGUF file."""

    kind: str  # "hf" | "gguf"
    path: Path
    format: str


def locate(path: Path, prefer: str | None = None) -> LoadedModel:
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidInput(f"{path}: a model file must be .gguf (or give a transformers model folder)")
        return LoadedModel("gguf", path, "gguf")
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        qc = cfg.get("quantization_config") or {}
        fmt = str(qc.get("quant_method") or "safetensors")
        return LoadedModel("hf", path, "compressed-tensors" if fmt == "compressed-tensors" else fmt)
    ggufs = sorted(path.glob("*.gguf"))
    if prefer:
        ggufs = [g for g in ggufs if prefer.lower() in g.name.lower()] or ggufs
    if len(ggufs) == 1 or (ggufs and prefer):
        return LoadedModel("gguf", ggufs[0], "gguf")
    if ggufs:
        raise InvalidInput(
            f"{path} holds several GGUF files ({', '.join(g.name for g in ggufs)}); name one in the URI"
        )
    raise InvalidInput(f"{path}: neither a transformers model folder (config.json) nor a GGUF file")


def eval_texts(path: Path | None) -> str:
    if path is None:
        return default_text()
    from tuneops.workers.awq import calibration_texts

    return "\n\n".join(calibration_texts(path))


def windows(ids: list[int], bos: int | None, samples: int, max_seq_len: int) -> list[list[int]]:
    """Non-overlapping windows of max_seq_len tokens, each opened with BOS like a fresh prompt."""
    head = [bos] if bos is not None else []
    step = max_seq_len - len(head)
    out = [head + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]
    if not out and len(ids) > 1:
        out = [head + ids]
    return out[:samples]


def tokenize(text: str, hf_dir: Path | None, gguf_file: Path | None) -> tuple[list[int], int | None]:
    """Token ids of the text and the BOS id, from the HF tokenizer when there is one (both models then see
    exactly the same tokens), else from the GGUF's own vocabulary."""
    if hf_dir is not None:
        from transformers import AutoTokenizer

        tok: Any = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return list(ids), tok.bos_token_id
    assert gguf_file is not None
    llm = _llama(gguf_file, 512)
    try:
        ids = llm.tokenize(text.encode(), add_bos=False, special=False)
        return list(ids), int(llm.token_bos())
    finally:
        llm.close()


def _llama(path: Path, n_ctx: int) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_threads=thread_count(),
        verbose=False,
    )


def gguf_logits(path: Path, seqs: list[list[int]]) -> list[Any]:
    """Logits (numpy, [len, vocab]) of each sequence from llama.cpp."""
    import numpy as np

    n_ctx = max(len(s) for s in seqs)
    llm = _llama(path, max(n_ctx, 32))
    try:
        out = []
        for s in seqs:
            llm.reset()
            llm.eval(s)
            out.append(np.array(llm.scores[: len(s)], dtype=np.float32))
        return out
    finally:
        llm.close()


def hf_logits(path: Path, seqs: list[list[int]]) -> list[Any]:
    """Logits (numpy float32, [len, vocab]) of each sequence from transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", trust_remote_code=False)
    model.eval()
    out = []
    with torch.inference_mode():
        for s in seqs:
            logits = model(input_ids=torch.tensor([s])).logits[0]
            out.append(logits.float().numpy())
    return out


def perplexity(logits: list[Any], seqs: list[list[int]]) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of each next token, in float64."""
    import numpy as np

    nll = 0.0
    count = 0
    for lg, s in zip(logits, seqs, strict=True):
        x = lg[:-1].astype(np.float64)
        x = x - x.max(axis=-1, keepdims=True)
        logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
        tgt = np.array(s[1:])
        nll -= float(logp[np.arange(len(tgt)), tgt].sum())
        count += len(tgt)
    if count == 0:
        raise InvalidInput("evaluation text is too short: no tokens to predict")
    return math.exp(nll / count), count


def model_logits(m: LoadedModel, seqs: list[list[int]]) -> list[Any]:
    return gguf_logits(m.path, seqs) if m.kind == "gguf" else hf_logits(m.path, seqs)


def run_evaluate(
    model_uri: str,
    reference_uri: str,
    *,
    dataset_uri: str | None = None,
    samples: int = 64,
    max_seq_len: int = 256,
    max_increase_pct: float = DEFAULT_MAX_INCREASE_PCT,
) -> WorkerResult:
    if samples <= 0 or max_seq_len < 8:
        raise InvalidInput("samples must be positive and max-seq-len at least 8")
    model_path = storage.fetch(model_uri)
    ref_path = storage.fetch(reference_uri)
    model = locate(model_path)
    ref = locate(ref_path)
    text = eval_texts(storage.fetch(dataset_uri) if dataset_uri else None)
    hf_dir = ref.path if ref.kind == "hf" else (model.path if model.kind == "hf" else None)
    ids, bos = tokenize(text, hf_dir, model.path if model.kind == "gguf" else ref.path)
    seqs = windows(ids, bos, samples, max_seq_len)
    if not seqs:
        raise InvalidInput("evaluation text is too short")
    start = time.monotonic()
    ppl, n = perplexity(model_logits(model, seqs), seqs)
    ref_ppl, _ = perplexity(model_logits(ref, seqs), seqs)
    increase = (ppl - ref_ppl) / ref_ppl * 100.0
    passed = math.isfinite(ppl) and increase <= max_increase_pct
    log.info(
        "perplexity %.4f vs reference %.4f (%+.2f%%, limit %.2f%%) on %d tokens in %.1fs: %s",
        ppl,
        ref_ppl,
        increase,
        max_increase_pct,
        n,
        time.monotonic() - start,
        "pass" if passed else "FAIL",
    )
    manifest = storage.read_manifest(model_path) if model_path.is_dir() else None
    size = (
        model.path.stat().st_size
        if model.path.is_file()
        else sum(p.stat().st_size for p in model.path.rglob("*") if p.is_file())
    )
    result = WorkerResult(
        artifact=ArtifactResult(
            uri=model_uri,
            digest=storage.digest_of(model.path)
            if model.kind == "gguf"
            else (manifest.digest if manifest else storage.digest_of(model.path)),
            size_bytes=size,
            format=model.format,
        ),
        metrics=Metrics(
            perplexity=round(ppl, 6),
            reference_perplexity=round(ref_ppl, 6),
            increase_pct=round(increase, 4),
            tokens=n,
        ),
        passed=passed,
    )
    return result
