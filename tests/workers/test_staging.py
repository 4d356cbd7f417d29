"""Staging folders per Job: two Jobs writing one output never share or remove each other's folder, and the
last one to finish publishes a whole artifact."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.render_support import owner
from tuneops import storage
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.config import OperatorConfig
from tuneops.render.finetunedmodel import render_merge_job
from tuneops.storage import artifacts
from tuneops.storage.artifacts import JOB_NAME_ENV, STAGING_MARK
from tuneops.storage.manifest import MANIFEST_NAME

pytestmark = pytest.mark.workers


def _begin(final: Path, job: str, monkeypatch: pytest.MonkeyPatch) -> tuple[storage.Output, Path]:
    monkeypatch.setenv(JOB_NAME_ENV, job)
    out = storage.Output.of(str(final))
    return out, out.begin()


def _staging(final: Path) -> list[str]:
    return sorted(p.name for p in final.parent.glob(f".{final.name}{STAGING_MARK}*"))


def test_two_jobs_stage_apart_and_the_last_to_finish_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "models" / "merged"
    old, old_dir = _begin(final, "m-merge-aaaaaaaa", monkeypatch)
    (old_dir / "w.bin").write_bytes(b"old")
    new, new_dir = _begin(final, "m-merge-bbbbbbbb", monkeypatch)
    (new_dir / "w.bin").write_bytes(b"new")

    assert old_dir != new_dir
    assert old_dir.name.startswith(f".merged{STAGING_MARK}m-merge-aaaaaaaa-")
    assert new_dir.name.startswith(f".merged{STAGING_MARK}m-merge-bbbbbbbb-")
    assert old_dir.is_dir() and (old_dir / "w.bin").read_bytes() == b"old", "a live writer's folder is kept"

    first = old.commit(format="safetensors", key="k-old")
    assert (final / "w.bin").read_bytes() == b"old"
    second = new.commit(format="safetensors", key="k-new")
    assert (final / "w.bin").read_bytes() == b"new"
    manifest = storage.read_manifest(final)
    assert manifest is not None and manifest.digest == second.digest != first.digest
    assert storage.verify(final, manifest) == []
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_NAME, "w.bin"]
    assert [p.name for p in final.parent.iterdir()] == ["merged"], "no staging or old copies left"


def test_a_dead_writers_folder_is_removed_and_a_live_ones_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = tmp_path / "merged"
    final.parent.mkdir(exist_ok=True)
    # A writer in another process: it holds its folder's lock while it runs, and the kernel drops it on kill.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tuneops import storage; out = storage.Output.of(sys.argv[1]); "
         "print(out.begin(), flush=True); sys.stdin.read()", str(final)],
        env={**os.environ, JOB_NAME_ENV: "m-merge-live0000"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        live = Path(holder.stdout.readline().strip())
        dead = final.with_name(f".merged{STAGING_MARK}m-merge-dead0000-12345678")
        dead.mkdir()
        (dead / "half.bin").write_bytes(b"x")

        out, mine = _begin(final, "m-merge-cccccccc", monkeypatch)
        assert live.is_dir(), "the running writer keeps its folder"
        assert not dead.exists(), "a folder nobody holds is a leftover"
        out.abort()
        assert _staging(final) == [live.name]

        holder.kill()
        holder.wait(timeout=30)
        out, mine = _begin(final, "m-merge-cccccccc", monkeypatch)
        assert _staging(final) == [mine.name], "once its writer is gone, its folder is removed"
        out.abort()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(timeout=30)


def test_without_locks_only_the_same_jobs_earlier_folders_are_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "no locks here")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    final = tmp_path / "merged"
    final.parent.mkdir(exist_ok=True)
    other = final.with_name(f".merged{STAGING_MARK}m-merge-aaaaaaaa-11111111")
    earlier = final.with_name(f".merged{STAGING_MARK}m-merge-bbbbbbbb-22222222")
    other.mkdir()
    earlier.mkdir()
    out, mine = _begin(final, "m-merge-bbbbbbbb", monkeypatch)
    assert other.is_dir(), "another Job's folder may be in use: kept"
    assert not earlier.exists(), "a previous Pod of the same Job is gone: its folder is removed"
    (mine / "w.bin").write_bytes(b"w")
    out.commit(format="safetensors", key="k")
    assert (final / "w.bin").read_bytes() == b"w"


def test_outside_a_job_the_writer_is_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(JOB_NAME_ENV, raising=False)
    assert artifacts.writer_name() == f"pid{os.getpid()}"
    monkeypatch.setenv(JOB_NAME_ENV, "m-merge-1234abcd/../x")
    assert artifacts.writer_name() == "m-merge-1234abcd..x"


def test_a_publish_racing_another_into_an_empty_place_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final, first, second = tmp_path / "art", tmp_path / "s1", tmp_path / "s2"
    for folder, name in ((first, "a"), (second, "b")):
        folder.mkdir()
        (folder / name).write_bytes(name.encode())
    storage.publish_dir(first, final)
    # As if the second writer had looked before the first one published: its rename meets that artifact.
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: self != final and real_exists(self))
    storage.publish_dir(second, final)
    monkeypatch.undo()
    assert [p.name for p in final.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_worker_pods_carry_their_jobs_name() -> None:
    spec = FineTunedModelSpec.model_validate(
        {"baseModel": {"uri": "pvc://models/base"}, "adapter": {"uri": "pvc://adapters/a"}}
    )
    job = render_merge_job(spec, owner("FineTunedModel", "m"), OperatorConfig())
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[JOB_NAME_ENV] == job["metadata"]["name"]
