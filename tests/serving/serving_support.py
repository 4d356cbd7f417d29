"""Helpers for the serving tests and benches: tiny model sets, digest-addressed adapters, plain HTTP calls."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVED_NAME = "tiny"
LORA_RANK = 8
# large enough that each adapter moves greedy outputs of the random tiny model away from the base
ADAPTER_B_STD = 0.5


def dir_digest(path: Path) -> str:
    """Content digest of a directory (file names and bytes), as the artifact store would record it."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Adapter:
    name: str
    path: Path
    digest: str


@dataclass(frozen=True)
class TinyModels:
    base: Path
    adapters_root: Path
    # adapter weight sets by label; publish() places one under an adapter name
    weights: dict[str, Path]

    def publish(self, name: str, label: str) -> Adapter:
        """Place weight set ``label`` at a digest-specific path for adapter ``name``.

        vLLM keys prefix-cache blocks by adapter name and path, so new weights must arrive at a new path.
        """
        source = self.weights[label]
        digest = dir_digest(source)
        dest = self.adapters_root / name / digest.split(":", 1)[1][:16]
        if not dest.exists():
            shutil.copytree(source, dest)
        return Adapter(name=name, path=dest, digest=digest)


def make_tiny_models(root: Path, labels: tuple[str, ...] = ("w0", "w1", "w2", "w3")) -> TinyModels:
    from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

    base = make_model(root / "base", TinyModelSpec(seed=0))
    weights: dict[str, Path] = {}
    for i, label in enumerate(labels):
        spec = TinyAdapterSpec(r=LORA_RANK, alpha=16, seed=100 + i, b_std=ADAPTER_B_STD)
        weights[label] = make_adapter(base, root / "weights" / label, spec)
    return TinyModels(base=base, adapters_root=root / "adapters", weights=weights)


def http_json(
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    api_key: str | None = None,
    timeout: float = 120,
) -> tuple[int, Any]:
    """A plain HTTP call for assertions, independent of the code under test."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as err:
        raw = err.read()
        status = err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def complete(base_url: str, model: str, prompt: str, api_key: str | None = None, tokens: int = 12) -> str:
    status, body = http_json(
        "POST",
        f"{base_url}/v1/completions",
        {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0},
        api_key=api_key,
    )
    assert status == 200, body
    text: str = body["choices"][0]["text"]
    return text
