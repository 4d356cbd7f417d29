"""The merge-or-serve rule (table-tested) and the serving-level quality check's comparison."""

from __future__ import annotations

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
