"""llama.cpp's llama-server serves a Q4_K_M GGUF of the tiny model and answers OpenAI chat completions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from serving_support import SERVED_NAME, TinyModels, http_json

from tuneops import toolpaths
from tuneops.serving.llamacpp import llama_server_argv, llama_server_bin
from tuneops.serving.process import ServerProcess, free_port, running_server

pytestmark = [pytest.mark.serving, pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def gguf_q4(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tools = toolpaths.llamacpp_dir()
    # never a skip: `make llamacpp` (scripts/build-llamacpp.sh) builds these before the serving tests run
    assert llama_server_bin().exists(), f"{llama_server_bin()} missing: run scripts/build-llamacpp.sh"
    out = tmp_path_factory.mktemp("gguf")
    f16 = out / "tiny-f16.gguf"
    q4 = out / "tiny-Q4_K_M.gguf"
    subprocess.run(
        [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(tiny_models.base), "--outtype", "f16",
         "--outfile", str(f16)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [str(tools / "bin" / "llama-quantize"), str(f16), str(q4), "Q4_K_M"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert q4.stat().st_size < f16.stat().st_size
    return q4


@pytest.fixture(scope="module")
def llama_server(gguf_q4: Path, server_logs: Path) -> Iterator[ServerProcess]:
    port = free_port()
    argv = llama_server_argv(gguf_q4, port=port, alias=SERVED_NAME, ctx_size=512, threads=2)
    with running_server(
        argv, port=port, log_path=server_logs / "llama-server.log", health_timeout_s=120
    ) as server:
        yield server
    assert not server.running()


def test_chat_completion_from_gguf(llama_server: ServerProcess) -> None:
    status, body = http_json(
        "POST",
        f"{llama_server.base_url}/v1/chat/completions",
        {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "The operator reads"}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )
    assert status == 200, body
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str)
    assert body["usage"]["completion_tokens"] >= 1
    again = http_json(
        "POST",
        f"{llama_server.base_url}/v1/chat/completions",
        {
            "model": SERVED_NAME,
            "messages": [{"role": "user", "content": "The operator reads"}],
            "max_tokens": 8,
            "temperature": 0,
        },
    )[1]
    assert again["choices"][0]["message"]["content"] == message["content"]


def test_models_lists_the_alias(llama_server: ServerProcess) -> None:
    status, body = http_json("GET", f"{llama_server.base_url}/v1/models")
    assert status == 200, body
    assert SERVED_NAME in [m["id"] for m in body["data"]]
