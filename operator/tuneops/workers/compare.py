"""Merge or serve as LoRA: the same adapter measured both ways on the same hardware, and what that recommends.

Two vLLM servers run one after the other on the same machine: the merged model, then the base with the adapter
through vLLM's LoRA path. Each is held to the same workload by vLLM's own benchmark (`vllm bench serve`, random
prompts of fixed lengths, at each concurrency asked for), which reports output tokens/s, time to first token and
inter-token latency; the servers' CPU time over the run gives CPU-seconds per 1,000 output tokens.

Before any figure counts, the two must answer alike (the merge's correctness seen from the server): the merged
model's greedy answers to a fixed prompt set are scored by both servers (each answer given back as the prompt,
so both read the same tokens), and every token's log-probability must agree within `tolerance`. Comparing
greedy text instead would fail on a near tie that bfloat16 rounding tips either way; a broken merge (or a
broken LoRA path) moves them far more. The report names the prompt and the token.

`recommend` turns the figures into a choice with its reason in numbers (docs/merge-or-serve.md has the rule).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneops import proctree
from tuneops.serving.process import ServerProcess, free_port, running_server
from tuneops.serving.vllm import LoraModule, vllm_bin, vllm_serve_argv

# A fixed prompt set: short, varied, deterministic.
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "SELECT name FROM customers WHERE",
    "Once upon a time, in a small village,",
    "The three laws of thermodynamics are",
    "To reset your password, first",
    "Q: What is 17 times 23?\nA:",
    "Kubernetes operators reconcile",
)
TOLERANCE = 0.1
# the rule's thresholds (docs/merge-or-serve.md)
ONE_ADAPTER_MAX_COST = 0.05
SHARED_MAX_COST = 0.25


@dataclass(frozen=True)
class Load:
    """The workload: random prompts of fixed lengths, at each concurrency."""

    concurrency: tuple[int, ...] = (1, 8)
    input_len: int = 64
    output_len: int = 32
    prompts: int = 32


@dataclass(frozen=True)
class Figures:
    """One variant at one concurrency."""

    variant: str  # merged | lora
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    cpu_s_per_1k_tokens: float


@dataclass(frozen=True)
class Scored:
    """A token sequence (prompt, then the reference's greedy continuation) and the log-probability one server
    gives each continuation token, read with the whole sequence as the prompt (teacher forcing)."""

    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class Outcome:
    figures: list[Figures]
    differences: list[str]  # empty: the LoRA path answers as the merged model
    max_gap: float  # the largest log-probability difference seen


@dataclass(frozen=True)
class Recommendation:
    serve: str  # merged | lora
    reason: str


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process tree, from /proc (children that exited are counted by the kernel
    into their parent's cutime/cstime)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in (pid, *proctree.descendants(pid)):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15]) / tick
    return total


def _post(base_url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=120) as resp:
        out: dict[str, Any] = json.loads(resp.read())
    return out


def _ids(tokens: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(t.removeprefix("token_id:")) for t in tokens)


def greedy(
    base_url: str, model: str, prompt: str, max_tokens: int = 16
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The prompt's token ids and the server's greedy continuation (ids, not text: byte-level tokens decode
    alike)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 0,
            "echo": True, "ignore_eos": True, "return_tokens_as_token_ids": True}  # fmt: skip
    ids = _ids(_post(base_url, body)["choices"][0]["logprobs"]["tokens"])
    return ids[:-max_tokens], ids[-max_tokens:]


def score(base_url: str, model: str, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> Scored:
    """The log-probability this server gives each continuation token, the sequence given as the prompt."""
    body = {"model": model, "prompt": [*prompt_ids, *completion_ids], "max_tokens": 1, "temperature": 0,
            "logprobs": 0, "echo": True, "return_tokens_as_token_ids": True}  # fmt: skip
    lp = _post(base_url, body)["choices"][0]["logprobs"]["token_logprobs"]
    n = len(completion_ids)
    picked = lp[len(prompt_ids) : len(prompt_ids) + n]
    return Scored(tuple(prompt_ids), tuple(completion_ids), tuple(float(x) for x in picked))


def differences(
    reference: Sequence[Scored], candidate: Sequence[Scored], tolerance: float = TOLERANCE
) -> list[str]:
    """Where the candidate's log-probabilities of the reference's own greedy answers part from the reference's
    by more than `tolerance` (empty: they agree), one line per prompt."""
    out: list[str] = []
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        gaps = [abs(a - b) for a, b in zip(ref.logprobs, got.logprobs, strict=True)]
        worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
        if gaps and gaps[worst] > tolerance:
            out.append(
                f"prompt {i} ({PROMPTS[i % len(PROMPTS)][:24]!r}): token {worst} (id {ref.completion_ids[worst]}) "
                f"has log-probability {got.logprobs[worst]:.3f}, the merged model {ref.logprobs[worst]:.3f}"
            )
    return out


def max_gap(reference: Sequence[Scored], candidate: Sequence[Scored]) -> float:
    """The largest log-probability difference over every prompt and token (for the report)."""
    return max(
        (
            abs(a - b)
            for r, c in zip(reference, candidate, strict=True)
            for a, b in zip(r.logprobs, c.logprobs, strict=True)
        ),
        default=0.0,
    )


def _bench(
    server: ServerProcess, model: str, served: str, concurrency: int, load: Load, out: Path
) -> Figures:
    """vLLM's own benchmark against one running server, at one concurrency."""
    name = f"bench-{served}-{concurrency}.json"
    argv = [
        str(vllm_bin()), "bench", "serve", "--backend", "openai", "--base-url", server.base_url,
        "--endpoint", "/v1/completions", "--model", model, "--served-model-name", served,
        "--dataset-name", "random", "--random-input-len", str(load.input_len),
        "--random-output-len", str(load.output_len), "--num-prompts", str(load.prompts),
        "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", "0",
        "--percentile-metrics", "ttft,itl", "--metric-percentiles", "50,95",
        "--save-result", "--result-dir", str(out), "--result-filename", name, "--disable-tqdm",
    ]  # fmt: skip
    before = _cpu_seconds(server.pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})  # fmt: skip
    cpu = _cpu_seconds(server.pid) - before
    if done.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )
    result: dict[str, Any] = json.loads((out / name).read_text())
    tokens = float(result.get("total_output_tokens") or 0)
    return Figures(
        variant=served,
        concurrency=concurrency,
        output_tokens_per_s=round(float(result["output_throughput"]), 2),
        ttft_p50_ms=round(float(result["p50_ttft_ms"]), 2),
        ttft_p95_ms=round(float(result["p95_ttft_ms"]), 2),
        itl_p50_ms=round(float(result["p50_itl_ms"]), 2),
        cpu_s_per_1k_tokens=round(cpu / tokens * 1000, 3) if tokens else 0.0,
    )


def measure(
    base: Path,
    adapter: Path,
    merged: Path,
    *,
    load: Load = Load(),
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    max_lora_rank: int = 16,
) -> Outcome:
    """Both variants' figures (merged first, at each concurrency), and the quality check."""
    work = Path(workdir or tempfile.mkdtemp(prefix="tuneops-compare-"))
    figures: list[Figures] = []
    port = free_port()
    argv = vllm_serve_argv(merged, port=port, served_model_name="merged", max_model_len=1024)
    with running_server(argv, port=port, log_path=work / "merged.log", env=env) as server:
        answers = [greedy(server.base_url, "merged", p) for p in PROMPTS]
        reference = [score(server.base_url, "merged", p, c) for p, c in answers]
        figures += [_bench(server, str(merged), "merged", c, load, work) for c in load.concurrency]
    port = free_port()
    argv = vllm_serve_argv(base, port=port, served_model_name="base", max_model_len=1024,
                           lora_modules=[LoraModule("lora", str(adapter))], max_lora_rank=max_lora_rank,
                           max_loras=1)  # fmt: skip
    with running_server(argv, port=port, log_path=work / "lora.log", env=env) as server:
        candidate = [score(server.base_url, "lora", p, c) for p, c in answers]
        figures += [_bench(server, str(base), "lora", c, load, work) for c in load.concurrency]
    return Outcome(figures, differences(reference, candidate), max_gap(reference, candidate))


def recommend(figures: Sequence[Figures], adapters: int = 1, gpus_per_replica: int = 1) -> Recommendation:
    """Merge, or serve as LoRA, with the reason in numbers, from the highest concurrency measured.

    One adapter: merge, unless LoRA costs at most ONE_ADAPTER_MAX_COST of the merged throughput (then the LoRA
    path's flexibility, new versions without a new deployment, is nearly free). N adapters: one shared LoRA
    deployment instead of N merged ones saves (N-1) x the GPUs of a replica; serve as LoRA unless it costs more
    than SHARED_MAX_COST of the throughput."""
    top = max(f.concurrency for f in figures)
    merged = next(f for f in figures if f.variant == "merged" and f.concurrency == top)
    lora = next(f for f in figures if f.variant == "lora" and f.concurrency == top)
    cost = 1 - lora.output_tokens_per_s / merged.output_tokens_per_s if merged.output_tokens_per_s else 0.0
    slower = lora.ttft_p50_ms / merged.ttft_p50_ms - 1 if merged.ttft_p50_ms else 0.0
    pct = f"{abs(cost) * 100:.0f}%"
    if adapters <= 1:
        if cost > ONE_ADAPTER_MAX_COST:
            return Recommendation(
                "merged", f"merge: LoRA costs {pct} throughput at concurrency {top} for this adapter"
            )
        return Recommendation(
            "lora", f"serve as LoRA: it is within {pct} of the merged throughput at concurrency {top}"
        )
    saved = (adapters - 1) * gpus_per_replica
    if cost > SHARED_MAX_COST:
        return Recommendation(
            "merged", f"merge: LoRA costs {pct} throughput at concurrency {top}, more than the "
            f"{SHARED_MAX_COST * 100:.0f}% one shared deployment of {adapters} adapters may cost",
        )  # fmt: skip
    return Recommendation(
        "lora", f"serve as LoRA: {adapters} adapters on one deployment use {saved} fewer GPUs for "
        f"{max(slower, 0) * 100:.0f}% more latency and {max(cost, 0) * 100:.0f}% less throughput at concurrency {top}",
    )  # fmt: skip


def to_json(figures: Sequence[Figures]) -> list[dict[str, Any]]:
    return [asdict(f) for f in figures]
