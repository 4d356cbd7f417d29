"""Termination message schema and thread configuration."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuneops.workers import result as res
from tuneops.workers.common import thread_count

pytestmark = pytest.mark.workers


def test_round_trip_in_camel_case() -> None:
    r = res.WorkerResult(
        artifact=res.ArtifactResult(
            uri="s3://b/p", digest="sha256:x", size_bytes=10, format="gguf", files=["a.gguf"]
        ),
        metrics=res.Metrics(perplexity=10.5, reference_perplexity=10.0, increase_pct=5.0),
        passed=True,
    )
    text = r.dumps()
    data = json.loads(text)
    assert data["artifact"]["sizeBytes"] == 10
    assert data["metrics"] == {"perplexity": 10.5, "referencePerplexity": 10.0, "increasePct": 5.0}
    assert res.parse(text) == r


def test_message_stays_under_the_kubernetes_limit() -> None:
    r = res.WorkerResult(
        adapter=res.AdapterFacts(
            type="LORA", rank=8, alpha=16, rs_lora=False, target_modules=["m"] * 10, modules_to_save=[]
        ),
        problems=[f"problem number {i} " + "x" * 300 for i in range(100)],
    )
    assert len(r.dumps().encode()) < res.MAX_BYTES
    assert len(res.WorkerResult(error="e" * 100_000).dumps().encode()) < res.MAX_BYTES


def test_explicit_unwritable_path_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("TUNEOPS_TERMINATION_LOG", "/nonexistent-dir/log")
    with pytest.raises(OSError):
        res.write(res.WorkerResult(error="x"))


@pytest.mark.parametrize("threads", ["1", "3"])
def test_threads_follow_omp_num_threads(threads: str) -> None:
    code = (
        "from tuneops.workers.common import configure_threads; import torch; "
        "n = configure_threads(); print(n, torch.get_num_threads())"
    )
    env = {"OMP_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == [threads, threads]


def test_thread_count_without_env_is_bounded_by_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert 1 <= thread_count() <= (os.cpu_count() or 1)
