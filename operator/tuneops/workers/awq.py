"""AWQ quantization: llm-compressor (AWQ + W4A16, compressed-tensors output vLLM loads) or AutoAWQ (opt-in).

AutoAWQ (0.2.9, deprecated upstream) pins an older transformers (4.x) and needs triton, so it cannot share
the worker environment; it runs only where `import awq` works (an image built for it). It is not exercised
by the CPU tests: its output cannot be reloaded on CPU. Asking for it elsewhere is an invalid-input error.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from tuneops import storage
from tuneops.storage.manifest import tool_versions
from tuneops.workers.common import InvalidInput
from tuneops.workers.corpus import corpus_lines
from tuneops.workers.result import ArtifactResult, WorkerResult

log = logging.getLogger("tuneops.workers.awq")

BACKENDS = ("llm-compressor", "autoawq")
TOOLS = {
    "llm-compressor": ("torch", "transformers", "llmcompressor", "compressed-tensors"),
    "autoawq": ("torch", "transformers", "autoawq"),
}


def calibration_texts(path: Path | None) -> list[str]:
    """Lines of text from a .txt file, a .jsonl file (field "text"), a folder of those, or the built-in set."""
    if path is None:
        return corpus_lines(n_sentences=600, seed=7)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    texts: list[str] = []
    for f in files:
        if f.suffix == ".jsonl":
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    raise InvalidInput(f"{f.name} line {n} is not JSON") from None
                text = row.get("text") if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise InvalidInput(f"{f.name} line {n} has no string field 'text'")
                texts.append(text)
        elif f.suffix in (".txt", ".text", ".md", ""):
            texts += [p for p in f.read_text().split("\n\n") if p.strip()]
    if not texts:
        raise InvalidInput(f"no calibration text found in {path} (.txt or .jsonl with a 'text' field)")
    return texts


def calibration_samples(tokenizer: Any, texts: list[str], samples: int, max_seq_len: int) -> list[list[int]]:
    """Token sequences of max_seq_len cut from the concatenated text (so short lines still fill a sample)."""
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
        if len(ids) >= samples * max_seq_len:
            break
    if not ids:
        raise InvalidInput("calibration text tokenized to nothing")
    while len(ids) < max_seq_len:
        ids = ids + ids
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    step = max_seq_len - len(bos)
    out = [bos + ids[i : i + step] for i in range(0, len(ids) - step + 1, step)]
    return out[:samples]


def _scheme(bits: int, group_size: int, zero_point: bool) -> dict[str, Any]:
    return {
        "group_0": {
            "targets": ["Linear"],
            "weights": {
                "num_bits": bits,
                "type": "int",
                "symmetric": not zero_point,
                "strategy": "group",
                "group_size": group_size,
            },
        }
    }


def _cpu_guard() -> None:
    """llm-compressor pins cached activations for faster host-to-GPU copies; pinning fails without an
    accelerator ("Cannot access accelerator device"), and on CPU there is nothing to gain from it."""
    import torch

    if torch.accelerator.is_available():
        return
    from llmcompressor.pipelines import cache

    def _no_pin(self: Any, batch_index: int, input_names: list[str] | None = None) -> None:
        return None

    setattr(cache.IntermediatesCache, "pin_memory", _no_pin)  # noqa: B010 - mypy refuses method assignment


def quantize_llmcompressor(
    src: Path,
    out: Path,
    *,
    bits: int,
    group_size: int,
    zero_point: bool,
    texts: list[str],
    samples: int,
    max_seq_len: int,
) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor.entrypoints.oneshot import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _cpu_guard()
    tokenizer: Any = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    model: Any = AutoModelForCausalLM.from_pretrained(
        str(src),
        dtype="auto",
        device_map="auto" if torch.cuda.is_available() else None,
        trust_remote_code=False,
    )
    seqs = calibration_samples(tokenizer, texts, samples, max_seq_len)
    ds = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})
    recipe = [
        AWQModifier(duo_scaling=True),
        QuantizationModifier(config_groups=_scheme(bits, group_size, zero_point), ignore=["lm_head"]),
    ]
    log.info("AWQ (llm-compressor): %d calibration samples of %d tokens", len(seqs), max_seq_len)
    oneshot(
        model=model,
        dataset=ds,
        recipe=recipe,
        max_seq_length=max_seq_len,
        num_calibration_samples=len(seqs),
        shuffle_calibration_samples=False,
    )
    model.save_pretrained(str(out), save_compressed=True)
    tokenizer.save_pretrained(str(out))


def quantize_autoawq(
    src: Path,
    out: Path,
    *,
    bits: int,
    group_size: int,
    zero_point: bool,
    texts: list[str],
    samples: int,
    max_seq_len: int,
) -> None:
    """AutoAWQ (deprecated upstream; needs its own environment with older torch/transformers and a GPU to
    reload its output). Kept as an opt-in for models llm-compressor does not cover."""
    try:
        from awq import AutoAWQForCausalLM
    except ImportError:
        raise InvalidInput(
            "backend autoawq needs the AutoAWQ environment (pip install autoawq==0.2.9 with its pinned "
            "torch/transformers); the default worker image ships llm-compressor"
        ) from None
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    # AutoAWQ's own default is trust_remote_code=True
    model: Any = AutoAWQForCausalLM.from_pretrained(str(src), trust_remote_code=False)
    quant_config = {"zero_point": zero_point, "q_group_size": group_size, "w_bit": bits, "version": "GEMM"}
    model.quantize(
        tokenizer,
        quant_config=quant_config,
        calib_data=texts,
        max_calib_samples=samples,
        max_calib_seq_len=max_seq_len,
    )
    model.save_quantized(str(out))
    tokenizer.save_pretrained(str(out))


def run_awq(
    source_uri: str,
    output_uri: str,
    *,
    backend: str = "llm-compressor",
    bits: int = 4,
    group_size: int = 128,
    zero_point: bool = True,
    calibration_uri: str | None = None,
    samples: int = 128,
    max_seq_len: int = 512,
) -> WorkerResult:
    _check_args(backend, bits, group_size, samples, max_seq_len)
    out = storage.Output.of(output_uri)
    src = storage.fetch(source_uri)
    _check_source(src, source_uri, group_size)
    cal = storage.fetch(calibration_uri) if calibration_uri else None
    texts = calibration_texts(cal)
    inputs = {"source": storage.digest_of(src)}
    if cal is not None:
        inputs["calibration"] = storage.digest_of(cal)
    params: dict[str, Any] = {
        "backend": backend,
        "bits": bits,
        "groupSize": group_size,
        "zeroPoint": zero_point,
        "samples": samples,
        "maxSeqLen": max_seq_len,
    }
    tools = tool_versions(*TOOLS[backend])
    key = storage.reuse_key("quantize-awq", inputs, params, tools)
    found = out.reusable(key)
    if found is not None:
        log.info("a complete AWQ artifact of the same inputs exists at %s: reusing it", output_uri)
        return _result(out.location(found), found, reused=True)
    staging = out.begin()
    try:
        start = time.monotonic()
        fn = quantize_llmcompressor if backend == "llm-compressor" else quantize_autoawq
        fn(
            src,
            staging,
            bits=bits,
            group_size=group_size,
            zero_point=zero_point,
            texts=texts,
            samples=samples,
            max_seq_len=max_seq_len,
        )
        _copy_extras(src, staging)
        log.info("AWQ (%s) done in %.1fs", backend, time.monotonic() - start)
        manifest = out.commit(
            format="compressed-tensors" if backend == "llm-compressor" else "awq",
            worker="quantize-awq",
            key=key,
            inputs={k: {"digest": v} for k, v in inputs.items()}
            | {"source": {"uri": source_uri, "digest": inputs["source"]}},
            parameters=params,
            tools=tools,
        )
    except BaseException:
        out.abort()
        raise
    return _result(out.location(manifest), manifest, reused=False)


def _check_args(backend: str, bits: int, group_size: int, samples: int, max_seq_len: int) -> None:
    """Refuse settings the chosen backend cannot quantize with, before anything is downloaded."""
    if backend not in BACKENDS:
        raise InvalidInput(f"AWQ backend {backend!r} is not one of {', '.join(BACKENDS)}")
    allowed_bits = (4, 8) if backend == "llm-compressor" else (4,)
    if bits not in allowed_bits:
        raise InvalidInput(f"{bits}-bit weights are not supported by {backend}")
    if group_size <= 0 or samples <= 0 or max_seq_len < 8:
        raise InvalidInput("group-size and samples must be positive, max-seq-len at least 8")


def _check_source(src: Path, source_uri: str, group_size: int) -> None:
    """Refuse a folder that is not a transformers model, or whose hidden size the groups do not divide."""
    if not (src / "config.json").is_file():
        raise InvalidInput(f"{source_uri}: config.json not found (not a transformers model folder)")
    hidden = json.loads((src / "config.json").read_text()).get("hidden_size")
    if isinstance(hidden, int) and hidden % group_size:
        raise InvalidInput(f"hidden size {hidden} is not a multiple of group-size {group_size}")


def _copy_extras(src: Path, staging: Path) -> None:
    # save_pretrained writes config and tokenizer; these may be missing from what it writes.
    for name in ("generation_config.json", "chat_template.jinja", "tokenizer.model"):
        if (src / name).is_file() and not (staging / name).exists():
            (staging / name).write_bytes((src / name).read_bytes())


def _result(uri: str, m: storage.Manifest, *, reused: bool) -> WorkerResult:
    return WorkerResult(
        artifact=ArtifactResult(
            uri=uri, digest=m.digest, size_bytes=m.size_bytes, format=m.format, reused=reused or None
        )
    )
