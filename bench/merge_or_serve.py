"""Merge or serve as LoRA on this machine: the tiny model's adapter merged by the project's merge, against the
base with the adapter through vLLM's LoRA path, under vLLM's own benchmark (tuneops.workers.compare).

The rows are the figures a recommendation is made from (tokens/s, TTFT p50/p95, ITL p50, CPU-seconds per 1,000
output tokens, LoRA against merged at each concurrency), the serving-level quality check, and the recommendation.
docs/merge-or-serve.md puts them next to the published GPU figures.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

LOAD_CONCURRENCY = (1, 8)


def run() -> list[dict[str, Any]]:
    from tuneops.serving.vllm import vllm_bin, vllm_cpu_env
    from tuneops.workers.compare import TOLERANCE, Load, measure, recommend
    from tuneops.workers.merge import run_merge
    from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

    if not vllm_bin().exists():
        raise RuntimeError(f"{vllm_bin()} missing: run scripts/setup-vllm.sh (make vllm)")
    with tempfile.TemporaryDirectory(prefix="tuneops-bench-merge-or-serve-") as tmp:
        root = Path(tmp)
        base = make_model(root / "base", TinyModelSpec(seed=0))
        adapter = make_adapter(base, root / "adapter", TinyAdapterSpec(r=8, alpha=16, seed=7, b_std=0.5))
        merged = run_merge(str(base), str(adapter), str(root / "merged"))
        assert merged.artifact is not None
        load = Load(concurrency=LOAD_CONCURRENCY, input_len=64, output_len=32, prompts=32)
        outcome = measure(base, adapter, Path(merged.artifact.uri), load=load,
                          env=vllm_cpu_env(threads=2), workdir=root / "work", max_lora_rank=8)  # fmt: skip
    figures, diffs = outcome.figures, outcome.differences
    rows: list[dict[str, Any]] = []
    why = "a measurement the recommendation is made from; the rule, not a bound, judges it"
    for c in load.concurrency:
        merged_f = next(f for f in figures if f.variant == "merged" and f.concurrency == c)
        lora_f = next(f for f in figures if f.variant == "lora" and f.concurrency == c)
        for label, unit, lora_v, merged_v in (
            ("output tokens/s", "tok/s", lora_f.output_tokens_per_s, merged_f.output_tokens_per_s),
            ("TTFT p50", "ms", lora_f.ttft_p50_ms, merged_f.ttft_p50_ms),
            ("TTFT p95", "ms", lora_f.ttft_p95_ms, merged_f.ttft_p95_ms),
            ("ITL p50", "ms", lora_f.itl_p50_ms, merged_f.itl_p50_ms),
            (
                "CPU-s per 1k output tokens",
                "s",
                lora_f.accelerator_s_per_thousand_tokens,
                merged_f.accelerator_s_per_thousand_tokens,
            ),
        ):
            rows.append({
                "name": f"merge-or-serve: LoRA vs merged, {label}, concurrency {c}", "value": lora_v, "unit": unit,
                "baseline": merged_v, "ratio": round(lora_v / merged_v, 3) if merged_v else None,
                "target": None, "no_target": why,
            })  # fmt: skip
    rows.append({
        "name": "merge-or-serve: the LoRA path answers as the merged model (greedy, log-probabilities)",
        "value": "agree" if not diffs else f"{len(diffs)} differ: {diffs[0]}", "unit": "", "target": "agree",
        "baseline": None, "ratio": None,
    })  # fmt: skip
    rows.append({
        "name": "merge-or-serve: largest log-probability gap, LoRA path vs merged", "value": round(outcome.max_gap, 4),
        "unit": "nats", "target": f"<= {TOLERANCE}",
    })  # fmt: skip
    choice = recommend(figures)
    rows.append({
        "name": f"merge-or-serve: recommendation for one adapter: {choice.reason}", "value": choice.serve,
        "unit": "", "target": None, "no_target": "the output of the rule (docs/merge-or-serve.md), from the rows above",
    })  # fmt: skip
    return rows
