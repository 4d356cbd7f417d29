"""Serving benchmarks on the CPU build of vLLM: adapter hot-load latency, and merged vs base+adapter throughput."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tuneops.adapters import AdapterClient, DesiredAdapter, PodMemory, reconcile_pod
from tuneops.serving.process import ServerProcess, free_port, running_server
from tuneops.serving.vllm import runtime_lora_env, vllm_bin, vllm_cpu_env, vllm_serve_argv

SERVED_NAME = "tiny"
CONCURRENCY = 32
TOKENS = 32
ROUNDS = 3
HOT_LOADS = 5
PROMPT = "The operator reads the adapter and serves each request by name."
# On GPUs users expect an adapter to cost a few percent. vLLM's CPU LoRA path adds per-layer ops whose fixed
# cost dominates on a 256-wide model: measured here 0.14-0.85 of merged throughput (the spread is the shared
# machine's load: the two servers run one after the other). The bound is the lowest ratio measured on this
# machine: a figure under it is an adapter path slower than any seen here (0.1, the bound before, passed a
# ratio 30% under the worst measured run and so failed only when the path was broken outright).
THROUGHPUT_RATIO_TARGET = 0.14
HOT_LOAD_TARGET_S = 1.0


def _make_models(root: Path) -> tuple[Path, list[Path], Path]:
    """A tiny base, a few adapters, and the first adapter merged into the base (the same weights, two ways)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

    base = make_model(root / "base", TinyModelSpec(seed=0))
    adapters = [
        make_adapter(base, root / f"adapter-{i}", TinyAdapterSpec(r=8, alpha=16, seed=200 + i, b_std=0.5))
        for i in range(HOT_LOADS + 1)
    ]
    merged = root / "merged"
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32), adapters[0]
    )
    model.merge_and_unload().save_pretrained(str(merged))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(merged))
    return base, adapters, merged


async def _one_request(session: aiohttp.ClientSession, url: str, model: str) -> int:
    body = {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
    async with session.post(f"{url}/v1/completions", json=body) as response:
        data: Any = await response.json()
        if response.status != 200:
            raise RuntimeError(f"{model}: HTTP {response.status}: {data}")
        tokens: int = data["usage"]["completion_tokens"]
        return tokens


async def _round(session: aiohttp.ClientSession, url: str, model: str) -> float:
    start = time.monotonic()
    counts = await asyncio.gather(*(_one_request(session, url, model) for _ in range(CONCURRENCY)))
    return sum(counts) / (time.monotonic() - start)


async def _throughputs(targets: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Completion tokens/s with CONCURRENCY requests in flight, per target (url, model); best of ROUNDS.

    Rounds alternate between the targets so that load from other work on the machine hits them alike;
    the numbers are only as steady as the machine is idle.
    """
    best = dict.fromkeys(targets, 0.0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for url, model in targets.values():
            await _round(session, url, model)  # warm-up
        for _ in range(ROUNDS):
            for key, (url, model) in targets.items():
                best[key] = max(best[key], await _round(session, url, model))
    return best


async def _hot_load_latencies(url: str, adapters: list[Path]) -> tuple[list[float], list[float]]:
    """Seconds from a desired-set change to the first answered request under the new name, and the load call alone."""
    desired: dict[str, DesiredAdapter] = {}
    memory = PodMemory()
    servable: list[float] = []
    calls: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        client = AdapterClient(url, session=session)
        for i, path in enumerate(adapters):
            name = f"hot{i}"
            desired = {**desired, name: DesiredAdapter(name=name, path=str(path), digest=f"sha256:{i}")}
            start = time.monotonic()
            result = await reconcile_pod("bench-0", client, desired, memory)
            memory = result.memory
            if not all(r.ok for r in result.results):
                raise RuntimeError(f"hot load failed: {result.results}")
            body = {"model": name, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
            async with session.post(f"{url}/v1/completions", json=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{name} not servable: HTTP {response.status}")
            servable.append(time.monotonic() - start)
            calls.extend(r.seconds for r in result.results)
    return servable, calls


def _serve(argv: list[str], port: int, log: Path, env: dict[str, str]) -> Any:
    return running_server(argv, port=port, log_path=log, env=env, health_timeout_s=300)


def run() -> list[dict[str, Any]]:
    if not vllm_bin().exists():
        raise RuntimeError(f"{vllm_bin()} missing: run scripts/setup-vllm.sh (make vllm)")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tuneops-bench-serving-") as tmp:
        root = Path(tmp)
        base, adapters, merged = _make_models(root)
        env = vllm_cpu_env(threads=2)

        # one server at a time: an idle vLLM CPU engine still competes for the two shared cores
        port = free_port()
        argv = vllm_serve_argv(merged, port=port, served_model_name=SERVED_NAME, max_model_len=512)
        server: ServerProcess
        t0 = time.monotonic()
        with _serve(argv, port, root / "merged.log", env) as server:
            startup_merged = time.monotonic() - t0
            tps = asyncio.run(_throughputs({"merged": (server.base_url, SERVED_NAME)}))

        port = free_port()
        argv = vllm_serve_argv(
            base, port=port, served_model_name=SERVED_NAME, enable_lora=True, max_lora_rank=8, max_loras=4
        )
        t0 = time.monotonic()
        with _serve(argv, port, root / "lora.log", runtime_lora_env(env)) as server:
            startup_lora = time.monotonic() - t0
            servable, calls = asyncio.run(_hot_load_latencies(server.base_url, adapters[1:]))
            # the hot-loaded adapters make way for the merged model's adapter, served as base + adapter
            asyncio.run(_load_only(server.base_url, "same", adapters[0]))
            tps |= asyncio.run(
                _throughputs(
                    {
                        "adapter": (server.base_url, "same"),
                        # the base on the LoRA-enabled server separates the adapter's compute from the mode
                        "base_on_lora": (server.base_url, SERVED_NAME),
                    }
                )
            )
        merged_tps, lora_tps, base_on_lora_tps = tps["merged"], tps["adapter"], tps["base_on_lora"]

    ratio = lora_tps / merged_tps if merged_tps else 0.0
    rows.append(
        {
            "name": "serving: adapter hot-load (desired change -> servable), median",
            "value": round(statistics.median(servable), 3),
            "unit": "s",
            "baseline": None,
            "ratio": None,
            "target": f"<= {HOT_LOAD_TARGET_S} s",
        }
    )
    rows.append(
        {
            "name": "serving: /v1/load_lora_adapter call, median",
            "value": round(statistics.median(calls) * 1000, 1),
            "unit": "ms",
            "baseline": None,
            "ratio": None,
            "target": None,
            "no_target": "one step of the hot-load above, whose target covers it",
        }
    )
    rows.append(
        {
            "name": f"serving: throughput base+adapter vs merged ({CONCURRENCY} concurrent x {TOKENS} tok)",
            "value": round(lora_tps, 1),
            "unit": "tok/s",
            "baseline": round(merged_tps, 1),
            "ratio": round(ratio, 3),
            "target": f"ratio >= {THROUGHPUT_RATIO_TARGET}",
        }
    )
    rows.append(
        {
            "name": "serving: throughput base model on a LoRA-enabled server vs merged",
            "value": round(base_on_lora_tps, 1),
            "unit": "tok/s",
            "baseline": round(merged_tps, 1),
            "ratio": round(base_on_lora_tps / merged_tps, 3) if merged_tps else 0.0,
            "target": None,
            "no_target": "splits the row above into the LoRA mode's cost and the adapter's; the row above has it",
        }
    )
    rows.append(
        {
            "name": "serving: vLLM CPU startup (merged / with LoRA)",
            "value": round(startup_lora, 1),
            "unit": "s",
            "baseline": round(startup_merged, 1),
            "ratio": None,
            "target": None,
            "no_target": "vLLM's own startup (23-50 s here), which the operator does not change",
        }
    )
    return rows


async def _load_only(url: str, name: str, adapter: Path) -> None:
    async with AdapterClient(url) as client:
        want = {name: DesiredAdapter(name=name, path=str(adapter), digest="sha256:merged")}
        result = await reconcile_pod("bench-0", client, want, PodMemory())
        if not result.results or not all(r.ok for r in result.results):
            raise RuntimeError(f"loading the merged model's adapter failed: {result.results}")


if __name__ == "__main__":
    for row in run():
        print(row)
