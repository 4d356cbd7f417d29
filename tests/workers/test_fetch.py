"""`tuneops worker fetch`: fills a serving Pod's model folder (possibly a mount point) from s3:// or a path."""

from __future__ import annotations

import json
from pathlib import Path

from tests.workers.conftest import run_cli
from tests.workers.test_remote import _client, _upload_dir, s3_env  # noqa: F401  (module fixture)
from tuneops import storage


def test_fetch_from_s3_into_an_existing_folder_then_reuses_it(
    s3_env: dict[str, str],  # noqa: F811
    models: dict[str, Path],
    tmp_path: Path,
) -> None:
    client = _client(s3_env)
    client.create_bucket(Bucket="serve")
    _upload_dir(client, models["llama"], "serve", "tiny")
    dest = tmp_path / "mnt-model"
    dest.mkdir()  # like an emptyDir: the folder exists and must not be renamed
    (dest / "leftover.bin").write_bytes(b"partial")  # a previous attempt's debris
    log = tmp_path / "log"
    env = {**s3_env, "TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_WORKDIR": str(tmp_path / "work")}
    r = run_cli("fetch", "--source", "s3://serve/tiny", "--dest", str(dest), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (dest / "leftover.bin").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".tuneops-staging")]
    assert (dest / "config.json").read_bytes() == (models["llama"] / "config.json").read_bytes()
    art = json.loads(log.read_text())["artifact"]
    assert art["digest"] == storage.digest_of(models["llama"])
    assert art["sizeBytes"] > 0 and art["format"] == "safetensors"

    again = run_cli("fetch", "--source", "s3://serve/tiny", "--dest", str(dest), env=env)
    assert again.returncode == 0
    assert json.loads(log.read_text())["artifact"]["reused"] is True


def test_fetch_a_local_gguf_file(tmp_path: Path) -> None:
    src = tmp_path / "m.Q4_K_M.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 64)
    dest = tmp_path / "dest"
    log = tmp_path / "log"
    r = run_cli(
        "fetch", "--source", f"file://{src}", "--dest", str(dest), env={"TUNEOPS_TERMINATION_LOG": str(log)}
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (dest / src.name).read_bytes() == src.read_bytes()
    assert json.loads(log.read_text())["artifact"]["format"] == "gguf"


def test_fetch_missing_source_exits_2(tmp_path: Path) -> None:
    log = tmp_path / "log"
    r = run_cli("fetch", "--source", f"file://{tmp_path}/nope", "--dest", str(tmp_path / "d"),
                env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert r.returncode == 2
    assert "does not exist" in json.loads(log.read_text())["error"]
