"""A worker killed mid-write leaves the previous artifact intact, and the next run completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.workers.conftest import run_cli
from tuneops import storage
from tuneops.storage.artifacts import STAGING_MARK
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

pytestmark = pytest.mark.workers


def test_sigkill_mid_write_keeps_previous_artifact(tmp_path: Path) -> None:
    # Big enough (~27M params, many shards) that writing takes a visible while.
    spec = TinyModelSpec(hidden_size=768, intermediate_size=2048, num_layers=4, max_shard_size="2MB", seed=21)
    base = make_model(tmp_path / "base", spec)
    adapter = make_adapter(base, tmp_path / "adapter", TinyAdapterSpec(seed=22))
    out = tmp_path / "artifacts" / "merged"
    log = tmp_path / "log"
    env = {"TUNEOPS_TERMINATION_LOG": str(log)}
    args = ["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(out)]

    first = run_cli(*args, "--dtype", "float32", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    before = storage.read_manifest(out)
    assert before is not None and storage.verify(out, before) == []

    # Second run with another dtype (so nothing is reused); kill it once shards land in its staging dir.
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneops.workers.cli", *args, "--dtype", "float16"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    staging: list[Path] = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            staging = list(out.parent.glob(f".merged{STAGING_MARK}*"))
            if staging and len(list(staging[0].glob("*.safetensors"))) >= 3:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if proc.poll() is None and not staging:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the worker must be killed while it writes"
    assert staging and staging[0].exists(), "the half-written output stays in its staging dir"

    after = storage.read_manifest(out)
    assert after is not None and after.digest == before.digest
    assert storage.verify(out, after) == [], "the previous artifact is intact, byte for byte"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"

    again = run_cli(*args, "--dtype", "float16", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    final = storage.read_manifest(out)
    assert final is not None and final.digest != before.digest and storage.verify(out, final) == []
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"], "leftovers of the killed run are gone"
