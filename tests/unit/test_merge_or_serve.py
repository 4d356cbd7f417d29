"""The merge-or-serve rule (table-tested) and the serving-level quality check's comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneops.workers.compare import Figures, Scored, differences, max_gap, recommend


def figs(
    merged_tps: float, lora_tps: float, merged_ttft: float = 100.0, lora_ttft: float = 110.0
) -> list[Figures]:
    out = []
    for c in (1, 16):
        out.append(Figures("merged", c, merged_tps / (17 - c), merged_ttft, merged_ttft * 2, 10.0, 1.0))
        out.append(Figures("lora", c, lora_tps / (17 - c), lora_ttft, lora_ttft * 2, 11.0, 1.2))
    return out


@pytest.mark.parametrize(
    ("merged", "lora", "adapters", "serve", "reason"),
    [
        (100, 69, 1, "merged", "merge: LoRA costs 31% throughput at concurrency 16 for this adapter"),
        (100, 97, 1, "lora", "serve as LoRA: it is within 3% of the merged throughput at concurrency 16"),
        (
            100,
            88,
            4,
            "lora",
            "serve as LoRA: 4 adapters on one deployment use 3 fewer GPUs for 10% more latency "
            "and 12% less throughput at concurrency 16",
        ),
        (
            100,
            50,
            4,
            "merged",
            "merge: LoRA costs 50% throughput at concurrency 16, more than the 25% one shared "
            "deployment of 4 adapters may cost",
        ),
        (100, 105, 1, "lora", "serve as LoRA: it is within 5% of the merged throughput at concurrency 16"),
    ],
)
def test_the_rule(merged: float, lora: float, adapters: int, serve: str, reason: str) -> None:
    got = recommend(figs(merged, lora), adapters=adapters)
    assert (got.serve, got.reason) == (serve, reason)


def test_gpus_per_replica_count_in_what_sharing_saves() -> None:
    assert "use 6 fewer GPUs" in recommend(figs(100, 90), adapters=4, gpus_per_replica=2).reason


def scored(lps: list[float]) -> Scored:
    return Scored(prompt_ids=(1, 2), completion_ids=tuple(range(10, 10 + len(lps))), logprobs=tuple(lps))


def test_log_probabilities_within_tolerance_agree() -> None:
    ref = [scored([-0.1, -0.2, -0.3])]
    assert differences(ref, [scored([-0.11, -0.19, -0.3])]) == []
    assert max_gap(ref, [scored([-0.11, -0.19, -0.3])]) == pytest.approx(0.01)


def test_a_drifted_probability_is_reported_with_its_token() -> None:
    ref = [scored([-0.1, -0.2, -0.3]), scored([-1.0])]
    (line,) = differences(ref, [scored([-0.1, -0.9, -0.3]), scored([-1.0])])
    assert line.startswith("prompt 0") and "token 1 (id 11)" in line and "-0.900" in line and "-0.200" in line


def test_without_gpus_sharing_saves_replicas() -> None:
    assert "use 3 fewer replicas" in recommend(figs(100, 90), adapters=4, unit="replicas").reason


def test_gpus_are_the_devices_the_plugin_mounted(tmp_path: Path) -> None:
    from tuneops.workers.compare import gpu_count

    assert gpu_count(tmp_path) == 0
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (tmp_path / name).touch()
    assert gpu_count(tmp_path) == 2


def test_the_throughput_ratio_is_read_at_one_concurrency() -> None:
    from tuneops.workers.compare import throughput_ratio

    assert throughput_ratio(figs(160, 120), 16) == 0.75
    assert throughput_ratio(figs(160, 120), 4) is None


def test_a_result_with_every_level_fits_the_termination_message() -> None:
    from dataclasses import asdict

    from tuneops.workers.result import Benchmark, BenchmarkFigures, WorkerResult, parse

    rows = [BenchmarkFigures.model_validate(asdict(Figures(v, 4096, 123456.78, 12345.67, 23456.78, 12.34, 1.234)))
            for v in ("merged", "lora") for _ in range(8)]  # fmt: skip
    result = WorkerResult(benchmark=Benchmark(figures=rows, recommendation="merged", reason="x" * 300,
                          quality_gap=0.02, accelerator="gpu", differences=["d" * 500] * 8), passed=False)  # fmt: skip
    text = result.dumps()
    assert len(text.encode()) <= 4096
    back = parse(text).benchmark
    assert back is not None and len(back.figures) == 16 and back.reason == "x" * 300


@pytest.mark.parametrize("levels", ["", "0", "1,x"])
def test_the_command_line_refuses_bad_concurrency(levels: str) -> None:
    from tuneops.workers.cli import build_parser
    from tuneops.workers.common import InvalidInput
    from tuneops.workers.compare import compare_from_args

    args = build_parser().parse_args(["compare", "--base", "file:///b", "--adapter", "file:///a", "--merged",
                                      "file:///m", "--concurrency", levels])  # fmt: skip
    with pytest.raises(InvalidInput, match="--concurrency"):
        compare_from_args(args)


def test_what_the_worker_reports_is_what_status_takes() -> None:
    import json
    from dataclasses import asdict

    from tuneops.reconcile.finetunedmodel import benchmark_status
    from tuneops.workers.result import Benchmark, BenchmarkFigures, WorkerResult

    rows = [BenchmarkFigures.model_validate(asdict(f)) for f in figs(100, 80)]
    sent = WorkerResult(benchmark=Benchmark(figures=rows, recommendation="merged", reason="merge: ...",
                        lora_throughput_ratio=0.8, quality_gap=0.01, accelerator="cpu"), passed=True)  # fmt: skip
    got = benchmark_status("j", json.loads(sent.dumps())["benchmark"])
    assert got is not None and got.figures is not None and len(got.figures) == 4
    assert got.figures[0].accelerator_s_per_thousand_tokens == 1.0 and got.lora_throughput_ratio == 0.8
    # anything else from a Pod is not status
    assert benchmark_status("j", {"figures": [{"variant": "other"}]}) is None
    assert benchmark_status("j", "merged") is None
