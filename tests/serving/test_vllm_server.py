"""The CPU build of vLLM serves a tiny model on 127.0.0.1: model list, completions, chat completions."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_support import SERVED_NAME, TinyModels, complete, http_json

from tuneops.render.serving.autoscaling import VLLM_METRICS
from tuneops.serving.process import ServerProcess, free_port, running_server
from tuneops.serving.vllm import vllm_cpu_env, vllm_serve_argv

pytestmark = [pytest.mark.serving, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def vllm_server(vllm_installed: Path, tiny_models: TinyModels, server_logs: Path) -> Iterator[ServerProcess]:
    port = free_port()
    argv = vllm_serve_argv(tiny_models.base, port=port, served_model_name=SERVED_NAME)
    with running_server(
        argv, port=port, log_path=server_logs / "vllm-basic.log", env=vllm_cpu_env(threads=2)
    ) as server:
        yield server
    assert not server.running(), "server still running after stop"


def test_models_lists_the_served_name(vllm_server: ServerProcess, tiny_models: TinyModels) -> None:
    status, body = http_json("GET", f"{vllm_server.base_url}/v1/models")
    assert status == 200, body
    entries = {m["id"]: m for m in body["data"]}
    assert set(entries) == {SERVED_NAME}
    assert entries[SERVED_NAME]["root"] == str(tiny_models.base)
    assert entries[SERVED_NAME]["parent"] is None


def test_completions_are_deterministic_at_temperature_zero(vllm_server: ServerProcess) -> None:
    first = complete(vllm_server.base_url, SERVED_NAME, "The operator reads", tokens=8)
    second = complete(vllm_server.base_url, SERVED_NAME, "The operator reads", tokens=8)
    assert first == second
    status, body = http_json(
        "POST",
        f"{vllm_server.base_url}/v1/completions",
        {"model": SERVED_NAME, "prompt": "The operator reads", "max_tokens": 8, "temperature": 0},
    )
    assert status == 200
    assert body["usage"]["completion_tokens"] >= 1
    assert body["model"] == SERVED_NAME


def test_chat_completions_apply_the_chat_template(vllm_server: ServerProcess) -> None:
    status, body = http_json(
        "POST",
        f"{vllm_server.base_url}/v1/chat/completions",
        {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "Which model serves this request?"}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert body["usage"]["prompt_tokens"] > len(["Which", "model", "serves", "this", "request?"])


def test_streaming_completion_and_unknown_model(vllm_server: ServerProcess) -> None:
    request = urllib.request.Request(
        f"{vllm_server.base_url}/v1/completions",
        data=json.dumps(
            {
                "model": SERVED_NAME,
                "prompt": "A small model",
                "max_tokens": 4,
                "temperature": 0,
                "stream": True,
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        lines = [line.decode().strip() for line in response if line.strip()]
    assert lines[-1] == "data: [DONE]"
    assert len(lines) >= 2
    status, body = http_json(
        "POST", f"{vllm_server.base_url}/v1/completions", {"model": "nope", "prompt": "x", "max_tokens": 1}
    )
    assert status == 404
    assert "does not exist" in body["error"]["message"]


def test_autoscaling_metrics_exist_per_served_model(vllm_server: ServerProcess) -> None:
    complete(vllm_server.base_url, SERVED_NAME, "Load for the metrics", tokens=2)
    with urllib.request.urlopen(f"{vllm_server.base_url}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    for name in VLLM_METRICS.values():
        # The KEDA query selects the service's series by the served model's name.
        labelled = [s for s in samples if s.startswith(name + "{") and f'model_name="{SERVED_NAME}"' in s]
        assert labelled, f"{name} with model_name={SERVED_NAME} missing from /metrics"
