"""Fixtures of the worker tests: tiny Llama/Mistral models and LoRA adapters made once per session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

ROOT = Path(__file__).resolve().parents[2]

# Two cores are shared: oversubscribed BLAS threads make these tests many times slower.
os.environ.setdefault("OMP_NUM_THREADS", "2")


def tensors(model_dir: Path) -> dict[str, Any]:
    """Every tensor of a model folder's safetensors files, by name."""
    from safetensors.torch import load_file

    out: dict[str, Any] = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


RICH_ADAPTER = TinyAdapterSpec(
    target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "embed_tokens"),
    rank_pattern={"v_proj": 4, "layers.1.mlp.gate_proj": 16},
    alpha_pattern={"layers.1.self_attn.q_proj": 32},
    modules_to_save=("lm_head",),
    seed=3,
)
RSLORA_ADAPTER = TinyAdapterSpec(use_rslora=True, r=16, alpha=8, seed=4)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Base models and adapters: llama (+ basic, rich, DoRA adapters), mistral (+ basic, rsLoRA adapters)."""
    root = tmp_path_factory.mktemp("tiny")
    out = {
        "llama": make_model(root / "llama", TinyModelSpec(family="llama", seed=0)),
        "mistral": make_model(root / "mistral", TinyModelSpec(family="mistral", seed=1)),
    }
    out["llama-lora"] = make_adapter(out["llama"], root / "llama-lora", TinyAdapterSpec())
    out["llama-rich"] = make_adapter(out["llama"], root / "llama-rich", RICH_ADAPTER)
    out["llama-dora"] = make_adapter(
        out["llama"], root / "llama-dora", TinyAdapterSpec(use_dora=True, seed=5)
    )
    out["mistral-lora"] = make_adapter(out["mistral"], root / "mistral-lora", TinyAdapterSpec(seed=6))
    out["mistral-rslora"] = make_adapter(out["mistral"], root / "mistral-rslora", RSLORA_ADAPTER)
    # a model of another width: its adapter does not fit the others
    wide = make_model(root / "wide", TinyModelSpec(hidden_size=512, num_layers=1, max_shard_size="4MB"))
    out["wide-lora"] = make_adapter(wide, root / "wide-lora", TinyAdapterSpec())
    return out


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs `python -m tuneops.workers.cli ...` the way a Job's container does."""
    full = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tuneops.workers.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=timeout,
        check=False,
    )
