"""A superseded Job still writing next to its replacement: real merge workers, one paused mid-write while the
other starts on the same output. Neither removes the other's staging folder, both finish, and the output is one
whole artifact, the last finisher's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tuneops import storage
from tuneops.storage.artifacts import JOB_NAME_ENV, STAGING_MARK
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

pytestmark = pytest.mark.workers


def _merge(base: Path, adapter: Path, out: Path, dtype: str, job: str, log: Path) -> subprocess.Popen[bytes]:
    args = ["merge", "--base", str(base), "--adapter", str(adapter), "--output", str(out), "--dtype", dtype]
    env = {**os.environ, JOB_NAME_ENV: job, "TUNEOPS_TERMINATION_LOG": str(log)}
    return subprocess.Popen([sys.executable, "-m", "tuneops.workers.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip


def _staging(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{STAGING_MARK}*"))


def _wait(
    predicate: Callable[[], object], proc: subprocess.Popen[bytes], what: str, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the worker ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_a_superseded_writer_and_its_replacement_both_publish_whole_artifacts(tmp_path: Path) -> None:
    spec = TinyModelSpec(hidden_size=768, intermediate_size=2048, num_layers=4, max_shard_size="2MB", seed=31)
    base = make_model(tmp_path / "base", spec)
    adapter = make_adapter(base, tmp_path / "adapter", TinyAdapterSpec(seed=32))
    out = tmp_path / "artifacts" / "merged"
    logs = {job: tmp_path / f"{job}.log" for job in ("m-merge-old00000", "m-merge-new00000")}

    old = _merge(base, adapter, out, "float32", "m-merge-old00000", logs["m-merge-old00000"])
    new: subprocess.Popen[bytes] | None = None
    try:
        # Pause the old writer with shards in its staging folder, and start its replacement on the same output.
        _wait(lambda: _staging(out) and len(list(_staging(out)[0].glob("*.safetensors"))) >= 2,
              old, "the old writer's shards")  # fmt: skip
        os.kill(old.pid, signal.SIGSTOP)
        [old_staging] = _staging(out)
        new = _merge(base, adapter, out, "float16", "m-merge-new00000", logs["m-merge-new00000"])
        _wait(lambda: [p for p in _staging(out) if p != old_staging], new, "the new writer's staging folder")
        assert old_staging.is_dir(), "the replacement left the old writer's folder alone"
        [new_staging] = [p for p in _staging(out) if p != old_staging]
        assert "m-merge-old00000" in old_staging.name and "m-merge-new00000" in new_staging.name
        os.kill(old.pid, signal.SIGCONT)
        for proc in (old, new):
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        for proc in (old, new):
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=30)

    results = {job: json.loads(log.read_text())["artifact"] for job, log in logs.items()}
    last = max(logs, key=lambda job: logs[job].stat().st_mtime_ns)
    manifest = storage.read_manifest(out)
    assert manifest is not None and storage.verify(out, manifest) == [], "one whole artifact"
    assert manifest.digest == results[last]["digest"], "the last writer to finish is the one published"
    dtype = json.loads((out / "config.json").read_text())["dtype"]
    assert dtype == ("float32" if last == "m-merge-old00000" else "float16")
    assert sorted(p.name for p in out.parent.iterdir()) == ["merged"], "no staging folders left"
