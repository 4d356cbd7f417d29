"""Merge or serve as LoRA: the same adapter measured both ways on the same hardware, and what that recommends.

Two vLLM servers run one after the other on the same machine: the merged model, then the base with the adapter
through vLLM's LoRA path. Each is held to the same workload by vLLM's own benchmark (`vllm bench serve`, random
prompts of fixed lengths, at each concurrency asked for), which reports output tokens/s, time to first token and
inter-token latency; the servers' CPU time over the run gives CPU-seconds per 1,000 output tokens.

Before any figure counts, the two must answer alike (the merge's correctness seen from the server): greedy
completions of a fixed prompt set, compared token by token. They agree when every token matches, or where they
first part the reference's two best candidates were a near tie (their log-probabilities within `tolerance`), and
every log-probability before that agrees within `tolerance` too. Anything else is a broken merge (or a broken
LoRA path), reported with the prompt and the position.

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
TOLERANCE = 0.05
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
class Completion:
    tokens: tuple[str, ...]
    logprobs: tuple[float, ...]
    # per position: the reference's candidates (token -> log-probability)
    top: tuple[dict[str, float], ...]


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


def complete(base_url: str, model: str, prompt: str, max_tokens: int = 16) -> Completion:
    """A greedy completion with the log-probabilities of the two best candidates at each position."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "logprobs": 2,
            "ignore_eos": True}  # fmt: skip
    req = urllib.request.Request(f"{base_url}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=120) as resp:
        lp = json.loads(resp.read())["choices"][0]["logprobs"]
    return Completion(
        tokens=tuple(lp["tokens"]),
        logprobs=tuple(float(x) for x in lp["token_logprobs"]),
        top=tuple({str(k): float(v) for k, v in (t or {}).items()} for t in lp["top_logprobs"]),
    )


def differences(
    reference: Sequence[Completion], candidate: Sequence[Completion], tolerance: float = TOLERANCE
) -> list[str]:
    """Where the candidate does not answer as the reference does (empty: they agree), one line per prompt."""
    out: list[str] = []
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        for pos, (a, b) in enumerate(zip(ref.tokens, got.tokens, strict=False)):
            if a != b:
                candidates = ref.top[pos]
                tie = (
                    b in candidates and abs(candidates.get(a, ref.logprobs[pos]) - candidates[b]) <= tolerance
                )
                if not tie:
                    out.append(f"prompt {i} ({PROMPTS[i % len(PROMPTS)][:24]!r}): token {pos} is {b!r}, the "
                               f"reference says {a!r}")  # fmt: skip
                break
            if abs(ref.logprobs[pos] - got.logprobs[pos]) > tolerance:
                out.append(f"prompt {i}: token {pos} {a!r} has log-probability {got.logprobs[pos]:.3f}, the "
                           f"reference {ref.logprobs[pos]:.3f}")  # fmt: skip
                break
    return out


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
) -> tuple[list[Figures], list[str]]:
    """Both variants' figures (merged first, at each concurrency), and the quality check's differences."""
    work = Path(workdir or tempfile.mkdtemp(prefix="tuneops-compare-"))
    figures: list[Figures] = []
    port = free_port()
    argv = vllm_serve_argv(merged, port=port, served_model_name="merged", max_model_len=1024)
    with running_server(argv, port=port, log_path=work / "merged.log", env=env) as server:
        reference = [complete(server.base_url, "merged", p) for p in PROMPTS]
        figures += [_bench(server, str(merged), "merged", c, load, work) for c in load.concurrency]
    port = free_port()
    argv = vllm_serve_argv(base, port=port, served_model_name="base", max_model_len=1024,
                           lora_modules=[LoraModule("lora", str(adapter))], max_lora_rank=max_lora_rank,
                           max_loras=1)  # fmt: skip
    with running_server(argv, port=port, log_path=work / "lora.log", env=env) as server:
        candidate = [complete(server.base_url, "lora", p) for p in PROMPTS]
        figures += [_bench(server, str(base), "lora", c, load, work) for c in load.concurrency]
    return figures, differences(reference, candidate)


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
