"""Command line for llama.cpp's OpenAI-compatible llama-server (built by scripts/build-llamacpp.sh)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tuneops import toolpaths
from tuneops.serving.process import HOST


def llama_server_bin() -> Path:
    return toolpaths.llamacpp_dir() / "bin" / "llama-server"


def llama_server_argv(
    gguf: str | os.PathLike[str],
    *,
    port: int,
    alias: str | None = None,
    ctx_size: int = 2048,
    threads: int | None = None,
    parallel: int = 1,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """llama-server on 127.0.0.1:``port`` serving one GGUF file under ``alias`` (the request's `model`)."""
    argv = [
        str(llama_server_bin()),
        "--model",
        str(gguf),
        "--host",
        HOST,
        "--port",
        str(port),
        "--ctx-size",
        str(ctx_size),
        "--parallel",
        str(parallel),
    ]
    if alias:
        argv += ["--alias", alias]
    if threads is not None:
        argv += ["--threads", str(threads)]
    if api_key:
        argv += ["--api-key", api_key]
    argv += list(extra_args)
    return argv
