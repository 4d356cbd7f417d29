"""Multi-LoRA on one vLLM server: startup adapters, then hot load, unload and same-name replacement by the reconciler."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from serving_support import SERVED_NAME, Adapter, TinyModels, complete, http_json

from tuneops.adapters import (
    ActionKind,
    AdapterClient,
    AdapterState,
    DesiredAdapter,
    PodMemory,
    PodResult,
    reconcile_pod,
    summarize,
)
from tuneops.serving.process import ServerProcess, free_port, running_server
from tuneops.serving.vllm import LoraModule, runtime_lora_env, vllm_cpu_env, vllm_serve_argv

pytestmark = [pytest.mark.serving, pytest.mark.slow, pytest.mark.timeout(900)]

API_KEY = "test-key-123"
POD = "tiny-0"
# longer than a KV block, so prefix-cache reuse across a weight change would show up as stale output
PROMPT = " ".join(["The operator reads the adapter and serves each request by name."] * 6)


@pytest.fixture(scope="module")
def startup(tiny_models: TinyModels) -> dict[str, Adapter]:
    return {"a0": tiny_models.publish("a0", "w0"), "a1": tiny_models.publish("a1", "w1")}


@pytest.fixture(scope="module")
def lora_server(
    vllm_installed: Path, tiny_models: TinyModels, startup: dict[str, Adapter], server_logs: Path
) -> Iterator[ServerProcess]:
    port = free_port()
    argv = vllm_serve_argv(
        tiny_models.base,
        port=port,
        served_model_name=SERVED_NAME,
        lora_modules=[LoraModule(a.name, str(a.path), SERVED_NAME) for a in startup.values()],
        max_lora_rank=8,
        max_loras=4,
        api_key=API_KEY,
    )
    env = runtime_lora_env(vllm_cpu_env(threads=2))
    with running_server(argv, port=port, log_path=server_logs / "vllm-lora.log", env=env) as server:
        yield server
    assert not server.running()


def desired(*adapters: Adapter) -> dict[str, DesiredAdapter]:
    return {a.name: DesiredAdapter(name=a.name, path=str(a.path), digest=a.digest) for a in adapters}


def reconcile(server: ServerProcess, want: Mapping[str, DesiredAdapter], memory: PodMemory) -> PodResult:
    async def one_pass() -> PodResult:
        async with AdapterClient(server.base_url, api_key=API_KEY) as client:
            return await reconcile_pod(POD, client, want, memory, max_attempts=3)

    return asyncio.run(one_pass())


def listed(server: ServerProcess) -> dict[str, str]:
    status, body = http_json("GET", f"{server.base_url}/v1/models", api_key=API_KEY)
    assert status == 200, body
    return {m["id"]: m["root"] for m in body["data"] if m["parent"] == SERVED_NAME}


def out(server: ServerProcess, model: str) -> str:
    return complete(server.base_url, model, PROMPT, api_key=API_KEY)


def test_startup_adapters_then_hot_load_unload_and_replace(
    lora_server: ServerProcess, tiny_models: TinyModels, startup: dict[str, Adapter]
) -> None:
    pid = lora_server.pid
    a0, a1 = startup["a0"], startup["a1"]
    assert listed(lora_server) == {"a0": str(a0.path), "a1": str(a1.path)}

    # the server lists what it loaded from --lora-modules and from which path: that is all the operator needs
    result = reconcile(lora_server, desired(a0, a1), PodMemory())
    assert result.reachable
    assert result.results == ()
    assert {n: s.state for n, s in result.states.items()} == {
        "a0": AdapterState.READY,
        "a1": AdapterState.READY,
    }
    summary = summarize(desired(a0, a1), [result])
    assert summary.ready
    assert summary.reason == "AllAdaptersServed"

    base_out, a0_out, a1_out = out(lora_server, SERVED_NAME), out(lora_server, "a0"), out(lora_server, "a1")
    assert len({base_out, a0_out, a1_out}) == 3, "each adapter must change the greedy output"

    # hot-load a third adapter
    a2 = tiny_models.publish("a2", "w2")
    want = desired(a0, a1, a2)
    result = reconcile(lora_server, want, result.memory)
    assert [(r.action.kind, r.action.name, r.ok) for r in result.results] == [(ActionKind.LOAD, "a2", True)]
    assert result.states["a2"].state is AdapterState.READY
    assert listed(lora_server)["a2"] == str(a2.path)
    a2_out = out(lora_server, "a2")
    assert a2_out not in {base_out, a0_out, a1_out}
    summary = summarize(want, [result])
    assert summary.ready
    assert {a.name: a.ready_pods for a in summary.adapters} == {"a0": 1, "a1": 1, "a2": 1}

    # remove one
    want = desired(a0, a2)
    result = reconcile(lora_server, want, result.memory)
    assert [(r.action.kind, r.action.name, r.ok) for r in result.results] == [(ActionKind.UNLOAD, "a1", True)]
    assert set(listed(lora_server)) == {"a0", "a2"}
    status, body = http_json(
        "POST",
        f"{lora_server.base_url}/v1/completions",
        {"model": "a1", "prompt": PROMPT, "max_tokens": 2},
        api_key=API_KEY,
    )
    assert status == 404, body
    assert "a1" not in result.states
    assert summarize(want, [result]).ready

    # replace a0's weights under the same name (the w2 weights, so the expected output is known)
    new_a0 = tiny_models.publish("a0", "w2")
    assert new_a0.digest != a0.digest
    want = desired(new_a0, a2)
    result = reconcile(lora_server, want, result.memory)
    assert [(r.action.kind, r.action.name, r.ok) for r in result.results] == [(ActionKind.RELOAD, "a0", True)]
    assert result.states["a0"].state is AdapterState.READY
    assert listed(lora_server)["a0"] == str(new_a0.path)
    assert out(lora_server, "a0") == a2_out != a0_out
    # the reload is an unload and a load, never vLLM's load_inplace: vLLM keeps that flag on the request it
    # stores, and its worker then reads the adapter from disk again at every step (vllm#41482). With the new
    # weights' folder moved away, the adapter still answers, from memory.
    moved = new_a0.path.with_name(new_a0.path.name + ".moved")
    new_a0.path.rename(moved)
    try:
        assert out(lora_server, "a0") == a2_out
    finally:
        moved.rename(new_a0.path)

    # a further pass with nothing changed does nothing
    steady = reconcile(lora_server, want, result.memory)
    assert steady.results == ()
    assert summarize(want, [steady]).ready

    assert lora_server.pid == pid and lora_server.running(), "adapter changes must not restart the server"


def test_broken_adapter_fails_after_bounded_retries_with_vllm_message(
    lora_server: ServerProcess, tiny_models: TinyModels
) -> None:
    good = tiny_models.publish("g3", "w3")
    missing = DesiredAdapter(
        name="broken", path=str(tiny_models.adapters_root / "does-not-exist"), digest="sha256:0"
    )
    want = {**desired(good), "broken": missing}
    memory = PodMemory()
    seen: list[AdapterState] = []
    for _ in range(3):
        result = reconcile(lora_server, want, memory)
        memory = result.memory
        seen.append(result.states["broken"].state)
        failed = [r for r in result.results if r.action.name == "broken"]
        assert len(failed) == 1 and not failed[0].ok
        assert failed[0].status == 404
        assert "No adapter found" in failed[0].message
    assert seen == [AdapterState.LOADING, AdapterState.LOADING, AdapterState.FAILED]
    assert result.states["g3"].state is AdapterState.READY
    # once Failed, no more attempts: the server is not hammered, the state does not flap
    again = reconcile(lora_server, want, memory)
    assert [r.action.name for r in again.results] == []
    assert again.states["broken"].state is AdapterState.FAILED
    assert again.states["broken"].attempts == 3
    summary = summarize(want, [again])
    assert not summary.ready
    assert summary.reason == "AdapterLoadFailed"
    assert "No adapter found" in summary.message
    by_name = {a.name: a for a in summary.adapters}
    assert by_name["broken"].state is AdapterState.FAILED
    assert by_name["g3"].ready_pods == 1

    # an adapter whose config is not a LoRA config: vLLM's own validation message comes through
    bad_dir = tiny_models.adapters_root / "bad-config"
    bad_dir.mkdir(parents=True, exist_ok=True)
    (bad_dir / "adapter_config.json").write_text("{}")
    want = {"bad": DesiredAdapter(name="bad", path=str(bad_dir), digest="sha256:1")}
    result = reconcile(lora_server, want, PodMemory())
    assert result.states["bad"].state is AdapterState.LOADING
    (bad_result,) = [r for r in result.results if r.action.name == "bad"]
    assert "Missing required configuration fields" in bad_result.message
    assert "bad" not in listed(lora_server)


def test_wrong_api_key_reads_as_unreachable(lora_server: ServerProcess, tiny_models: TinyModels) -> None:
    async def one_pass() -> PodResult:
        async with AdapterClient(lora_server.base_url, api_key="wrong") as client:
            return await reconcile_pod(POD, client, {}, PodMemory())

    result = asyncio.run(one_pass())
    assert not result.reachable
    assert "401" in result.error
    summary = summarize({}, [result])
    assert not summary.ready
    assert summary.reason == "PodUnreachable"


def test_launcher_leaves_out_an_adapter_vllm_would_refuse_and_the_server_starts(
    vllm_installed: Path, tiny_models: TinyModels, server_logs: Path, tmp_path: Path
) -> None:
    """The ConfigMap launcher in front of real vLLM: one good startup adapter and one whose rank exceeds
    --max-lora-rank. Given both, vLLM exits; through the launcher the base model and the good adapter serve,
    the bad one is named with its reason, and a runtime load of it returns vLLM's own refusal (what the
    operator reports as AdapterLoadFailed)."""
    from tuneops.render.serving.vllm import LAUNCHER
    from tuneops.workers.tiny import TinyAdapterSpec, make_adapter

    good = tiny_models.publish("good", "w0")
    big_path = make_adapter(
        tiny_models.base, tmp_path / "big", TinyAdapterSpec(r=16, alpha=16, seed=7, b_std=0.5)
    )
    modules = [LoraModule("good", str(good.path), SERVED_NAME), LoraModule("big", str(big_path), SERVED_NAME)]
    (tmp_path / "lora-modules.json").write_text("[" + ",".join(m.to_arg() for m in modules) + "]")
    (tmp_path / "launch.py").write_text(LAUNCHER)
    port = free_port()
    args = vllm_serve_argv(tiny_models.base, port=port, served_model_name=SERVED_NAME, enable_lora=True,
                           max_lora_rank=8, max_loras=4, api_key=API_KEY)[2:]  # fmt: skip
    args = ["--model", *args]
    env = runtime_lora_env(vllm_cpu_env(threads=2))
    env |= {
        "TUNEOPS_LORA_MODULES_FILE": str(tmp_path / "lora-modules.json"),
        "TUNEOPS_LORA_ARGS_AT": str(len(args)),
        "TMPDIR": str(tmp_path),
    }
    python = vllm_installed.parent / "python"
    log = server_logs / "vllm-launcher.log"
    with running_server(
        [str(python), str(tmp_path / "launch.py"), *args], port=port, log_path=log, env=env
    ) as server:
        assert listed(server) == {"good": str(good.path)}
        assert out(server, SERVED_NAME) != out(server, "good")
        report = json.loads((tmp_path / "tuneops-lora-startup.json").read_text())
        assert report["loaded"] == ["good"]
        assert "LoRA rank 16 is greater than --max-lora-rank 8" in report["leftOut"]["big"]
        assert "tuneops: adapter big left out of --lora-modules: LoRA rank 16" in log.read_text()
        # the operator's adapter reconcile then tries it through the runtime API and gets vLLM's reason
        want = {**desired(good), "big": DesiredAdapter(name="big", path=str(big_path), digest="sha256:big")}
        result = reconcile(server, want, PodMemory())
        (failed,) = [r for r in result.results if r.action.name == "big"]
        assert not failed.ok and "LoRA rank 16 is greater than max_lora_rank 8" in failed.message
        assert result.states["good"].state is AdapterState.READY
        assert listed(server) == {"good": str(good.path)}
    assert not server.running()
