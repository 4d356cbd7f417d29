"""Merge or serve as LoRA: the same adapter measured both ways on the same hardware, and what that recommends.

Two vLLM servers run one after the other on the same machine: the merged model, then the base with the adapter
through vLLM's LoRA path. Each is held to the same workload by vLLM's own benchmark (`vllm bench serve`, random
prompts of fixed lengths, at each concurrency asked for), which reports output tokens/s, time to first token and
inter-token latency. The cost per 1,000 output tokens is GPU-seconds (the run's wall time x the Pod's GPUs) where
the Pod has GPUs, else the servers' CPU time over the run (CPU-seconds).

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
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tuneops import proctree
from tuneops.serving.process import ServerProcess, free_port, running_server
from tuneops.serving.vllm import LoraModule, vllm_bin, vllm_serve_argv
from tuneops.workers.common import InvalidInput
from tuneops.workers.result import Benchmark, BenchmarkFigures, WorkerResult

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
# A shared deployment of N adapters is measured with min(N, MAX_MEASURED_ADAPTERS) copies of the adapter, each a
# LoRA of its own to vLLM, requests spread over them in turn: the batches mix adapters as a shared one's do.
MAX_MEASURED_ADAPTERS = 8
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
    dataset: Path | None = None  # a ShareGPT-format JSON file instead of random tokens
    max_model_len: int = 1024
    timeout_s: float = 3600.0  # one `vllm bench serve` run
    startup_timeout_s: float = 1800.0  # one server's start (a large model loads for minutes)
    kv_cache_bytes: int | None = (
        None  # vLLM on CPU: the KV cache within the Pod's memory (GPUs: vLLM's own share)
    )


@dataclass(frozen=True)
class Figures:
    """One variant at one concurrency."""

    variant: str  # merged | lora
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    accelerator_s_per_thousand_tokens: float
    """GPU-seconds per 1,000 output tokens with GPUs, CPU-seconds without."""


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


def gpu_count(dev: Path = Path("/dev")) -> int:
    """GPUs this container was given: the device plugin mounts one /dev/nvidiaN per allocated GPU."""
    return sum(1 for p in dev.glob("nvidia*") if p.name.removeprefix("nvidia").isdigit())


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
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            out: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as err:  # the server's own words, for the Job's result
        detail = err.read().decode(errors="replace")[:600]
        raise RuntimeError(f"{base_url}/v1/completions answered {err.code}: {detail}") from err
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
    server: ServerProcess,
    model: str,
    served: str,
    concurrency: int,
    load: Load,
    out: Path,
    loras: Sequence[str] = (),
) -> Figures:
    """vLLM's own benchmark against one running server, at one concurrency (`loras`: the adapters' served names,
    requests spread over them in turn; the figures are reported under `served`)."""
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
    if loras:
        argv[argv.index("--served-model-name") + 1] = loras[0]
        argv += ["--lora-modules", *loras, "--lora-assignment", "round-robin"]
    if load.dataset is not None:
        argv[argv.index("random") - 1 : argv.index("random") + 1] = ["--dataset-name", "sharegpt"]
        argv += ["--dataset-path", str(load.dataset), "--sharegpt-output-len", str(load.output_len)]
    before = _cpu_seconds(server.pid)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=load.timeout_s, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})  # fmt: skip
    cpu = _cpu_seconds(server.pid) - before
    if done.returncode != 0:
        raise RuntimeError(
            f"vllm bench serve failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}"
        )
    result: dict[str, Any] = json.loads((out / name).read_text())
    tokens = float(result.get("total_output_tokens") or 0)
    gpus = gpu_count()
    # With GPUs, the GPUs are the cost (held for the whole run, busy or not); without, the CPU time spent.
    spent = float(result.get("duration") or 0) * gpus if gpus else cpu
    return Figures(
        variant=served,
        concurrency=concurrency,
        output_tokens_per_s=round(float(result["output_throughput"]), 2),
        ttft_p50_ms=round(float(result["p50_ttft_ms"]), 2),
        ttft_p95_ms=round(float(result["p95_ttft_ms"]), 2),
        itl_p50_ms=round(float(result["p50_itl_ms"]), 2),
        accelerator_s_per_thousand_tokens=round(spent / tokens * 1000, 3) if tokens else 0.0,
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
    adapters: int = 1,
) -> Outcome:
    """Both variants' figures (merged first, at each concurrency), and the quality check. With `adapters` > 1
    the LoRA server holds that many copies of the adapter (at most MAX_MEASURED_ADAPTERS), each its own LoRA,
    and the load goes to them in turn, as a shared deployment's would."""
    work = Path(workdir or tempfile.mkdtemp(prefix="tuneops-compare-"))
    figures: list[Figures] = []
    gpus = gpu_count()
    # Both servers spread over every GPU of the Pod, as the service they stand for would be.
    extra = ["--tensor-parallel-size", str(gpus)] if gpus > 1 else []
    if not gpus:
        # vLLM's CPU build turns torch.compile off whenever LoRA is enabled; the merged model runs eager too, so
        # the two differ by the LoRA path alone (and no C++ compiler is needed in the image)
        extra.append("--enforce-eager")
        if load.kv_cache_bytes:
            extra += ["--kv-cache-memory-bytes", str(load.kv_cache_bytes)]
    port = free_port()
    argv = vllm_serve_argv(merged, port=port, served_model_name="merged", max_model_len=load.max_model_len,
                           extra_args=extra)  # fmt: skip
    with running_server(argv, port=port, log_path=work / "merged.log", env=env,
                        health_timeout_s=load.startup_timeout_s) as server:  # fmt: skip
        answers = [greedy(server.base_url, "merged", p) for p in PROMPTS]
        reference = [score(server.base_url, "merged", p, c) for p, c in answers]
        figures += [_bench(server, str(merged), "merged", c, load, work) for c in load.concurrency]
    port = free_port()
    copies = max(1, min(adapters, MAX_MEASURED_ADAPTERS))
    names = ["lora"] if copies == 1 else [f"lora{i}" for i in range(copies)]
    argv = vllm_serve_argv(base, port=port, served_model_name="base", max_model_len=load.max_model_len,
                           lora_modules=[LoraModule(n, str(adapter)) for n in names], max_lora_rank=max_lora_rank,
                           max_loras=copies, extra_args=extra)  # fmt: skip
    with running_server(argv, port=port, log_path=work / "lora.log", env=env,
                        health_timeout_s=load.startup_timeout_s) as server:  # fmt: skip
        candidate = [score(server.base_url, names[0], p, c) for p, c in answers]
        loras = names if copies > 1 else []
        figures += [_bench(server, str(base), "lora", c, load, work, loras) for c in load.concurrency]
    return Outcome(figures, differences(reference, candidate), max_gap(reference, candidate))


def recommend(
    figures: Sequence[Figures], adapters: int = 1, gpus_per_replica: int = 1, unit: str = "GPUs"
) -> Recommendation:
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
        "lora", f"serve as LoRA: {adapters} adapters on one deployment use {saved} fewer {unit} for "
        f"{max(slower, 0) * 100:.0f}% more latency and {max(cost, 0) * 100:.0f}% less throughput at concurrency {top}",
    )  # fmt: skip


def to_json(figures: Sequence[Figures]) -> list[dict[str, Any]]:
    return [asdict(f) for f in figures]


def run_compare(
    base_uri: str,
    adapter_uri: str,
    merged_uri: str,
    *,
    load: Load,
    adapters: int = 1,
    max_lora_rank: int = 16,
) -> WorkerResult:
    """The benchmark Job's work: fetch and check the three inputs, measure both, and recommend. A LoRA path that
    answers otherwise than the merged model fails the check (passed false, the differences named): its figures
    are reported, but no recommendation is made from them."""
    from tuneops.storage import fetch

    base, adapter, merged = fetch(base_uri), fetch(adapter_uri), fetch(merged_uri)
    outcome = measure(base, adapter, merged, load=load, max_lora_rank=max_lora_rank, adapters=adapters)
    figures = [BenchmarkFigures.model_validate(asdict(f)) for f in outcome.figures]
    top = max(load.concurrency)
    ratio = throughput_ratio(outcome.figures, top)
    gpus = gpu_count()
    accelerator = "gpu" if gpus else "cpu"
    if outcome.differences:
        bench = Benchmark(figures=figures, recommendation="merged", quality_gap=round(outcome.max_gap, 4),
                          reason=f"the LoRA path and the merged model answer differently (largest log-probability "
                          f"gap {outcome.max_gap:.3f}, limit {TOLERANCE}): " + "; ".join(outcome.differences[:2]),
                          lora_throughput_ratio=ratio, accelerator=accelerator,
                          differences=outcome.differences)  # fmt: skip
        return WorkerResult(benchmark=bench, passed=False)
    rec = recommend(outcome.figures, adapters=adapters, gpus_per_replica=max(gpus, 1),
                    unit="GPUs" if gpus else "replicas")  # fmt: skip
    bench = Benchmark(figures=figures, recommendation=rec.serve, reason=rec.reason, lora_throughput_ratio=ratio,
                      quality_gap=round(outcome.max_gap, 4), accelerator=accelerator)  # fmt: skip
    return WorkerResult(benchmark=bench, passed=True)


def throughput_ratio(figures: Sequence[Figures], concurrency: int) -> float | None:
    """LoRA output tokens/s over the merged model's at one concurrency (None without both)."""
    by = {(f.variant, f.concurrency): f.output_tokens_per_s for f in figures}
    merged, lora = by.get(("merged", concurrency)), by.get(("lora", concurrency))
    return round(lora / merged, 3) if merged and lora is not None else None


def compare_from_args(args: Any) -> WorkerResult:
    """`tuneops worker compare` (the benchmark Job's command line) to run_compare."""
    try:
        levels = tuple(int(c) for c in str(args.concurrency).split(",") if c.strip())
    except ValueError as exc:
        raise InvalidInput(f"--concurrency: comma-separated whole numbers, got {args.concurrency!r}") from exc
    if not levels or min(levels) < 1:
        raise InvalidInput(f"--concurrency: at least one level, each 1 or more, got {args.concurrency!r}")
    dataset = None
    if args.dataset:
        from tuneops.storage import fetch

        dataset = fetch(args.dataset)
    load = Load(concurrency=levels, input_len=args.input_len, output_len=args.output_len, prompts=args.prompts,
                dataset=dataset, max_model_len=args.max_model_len,
                kv_cache_bytes=args.kv_cache_bytes)  # fmt: skip
    return run_compare(args.base, args.adapter, args.merged, load=load, adapters=args.adapters,
                       max_lora_rank=args.max_lora_rank)  # fmt: skip
