"""Merge or serve, measured on real vLLM servers (CPU): the project's merge of an adapter answers as the base
with that adapter through vLLM's LoRA path does, vLLM's own benchmark gives both variants' figures, and a
deliberately broken merge (another adapter's weights merged) fails the serving-level quality check."""

from __future__ import annotations

from pathlib import Path

from serving_support import TinyModels

from tuneops.serving.vllm import vllm_cpu_env
from tuneops.workers.compare import Load, measure, recommend
from tuneops.workers.merge import run_merge

LOAD = Load(concurrency=(1, 4), input_len=32, output_len=16, prompts=8)


def _merged(tiny_models: TinyModels, label: str, out: Path) -> Path:
    result = run_merge(str(tiny_models.base), str(tiny_models.weights[label]), str(out))
    assert result.artifact is not None, result
    return out


def test_the_merge_answers_as_the_lora_path_and_both_are_measured(
    vllm_installed: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    merged = _merged(tiny_models, "w0", tmp_path / "merged")
    outcome = measure(tiny_models.base, tiny_models.weights["w0"], merged, load=LOAD,
                      env=vllm_cpu_env(threads=2), workdir=tmp_path / "work", max_lora_rank=8)  # fmt: skip
    figures = outcome.figures
    assert outcome.differences == [], (outcome.differences, outcome.max_gap)
    print(f"largest log-probability gap, LoRA vs merged: {outcome.max_gap:.4f}")
    assert [(f.variant, f.concurrency) for f in figures] == [
        ("merged", 1),
        ("merged", 4),
        ("lora", 1),
        ("lora", 4),
    ]
    for f in figures:
        assert f.output_tokens_per_s > 0 and f.ttft_p50_ms > 0 and f.ttft_p95_ms >= f.ttft_p50_ms, f
        # tokens a busy server streams in one chunk arrive together: a median gap of 0 is a measurement, not a fault
        assert f.itl_p50_ms >= 0 and f.accelerator_s_per_thousand_tokens > 0, f
    assert any(f.itl_p50_ms > 0 for f in figures), figures
    choice = recommend(figures)
    assert choice.serve in ("merged", "lora") and "concurrency 4" in choice.reason


def test_a_broken_merge_fails_the_quality_check(
    vllm_installed: Path, tiny_models: TinyModels, tmp_path: Path
) -> None:
    broken = _merged(tiny_models, "w1", tmp_path / "broken")  # another adapter's weights
    outcome = measure(tiny_models.base, tiny_models.weights["w0"], broken,
                       load=Load(concurrency=(1,), input_len=16, output_len=4, prompts=3),
                       env=vllm_cpu_env(threads=2), workdir=tmp_path / "work", max_lora_rank=8,
                       adapters=3)  # fmt: skip
    # a shared deployment of 3 is measured with 3 LoRAs of its own on one server, the requests spread over them
    assert "lora2" in (tmp_path / "work" / "lora.log").read_text()
    assert outcome.differences, "a merge of other weights must not pass"
    assert all("has log-probability" in d for d in outcome.differences), outcome.differences
    print(f"largest log-probability gap, LoRA vs a broken merge: {outcome.max_gap:.4f}")
