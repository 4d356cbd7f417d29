"""The merge-or-serve rule (table-tested) and the serving-level quality check's comparison."""

from __future__ import annotations

import pytest

from tuneops.workers.compare import Completion, Figures, differences, recommend


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


def c(tokens: str, lps: list[float], top: list[dict[str, float]] | None = None) -> Completion:
    toks = tuple(tokens.split())
    return Completion(toks, tuple(lps), tuple(top or [{t: lp} for t, lp in zip(toks, lps, strict=True)]))


def test_identical_answers_agree() -> None:
    ref = [c("a b c", [-0.1, -0.2, -0.3])]
    assert differences(ref, [c("a b c", [-0.11, -0.19, -0.3])]) == []


def test_a_near_tie_may_go_either_way() -> None:
    ref = [c("a b c", [-0.1, -0.69, -0.3], [{"a": -0.1}, {"b": -0.69, "x": -0.70}, {"c": -0.3}])]
    assert differences(ref, [c("a x d", [-0.1, -0.70, -0.5])]) == []


def test_a_different_answer_or_a_drifted_probability_is_reported() -> None:
    ref = [c("a b c", [-0.1, -0.2, -0.3], [{"a": -0.1}, {"b": -0.2, "x": -2.0}, {"c": -0.3}])]
    (line,) = differences(ref, [c("a x c", [-0.1, -2.0, -0.3])])
    assert "token 1 is 'x'" in line and "'b'" in line
    (line,) = differences(ref, [c("a b c", [-0.1, -0.5, -0.3])])
    assert "log-probability -0.500" in line
