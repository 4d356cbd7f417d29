"""Storage and integrity attacks: names that climb out of the download folder, links in model folders, an S3
upload cut short, and artifacts changed after they were made. Each is refused, and nothing leaks or is served.

S3 runs on moto's server (loopback, stopped by PID), the Hub on a local fake; workers run as their CLI does in a
Job, so the termination message the operator reads is the one asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import run_cli
from tests.workers.test_remote import FakeHub, _client, _handler, moto_server
from tuneops import storage
from tuneops.api.conditions import TERMINAL_REASONS, Reason
from tuneops.reconcile.jobs import observe_job
from tuneops.reconcile.workload import container_cause
from tuneops.storage import remote
from tuneops.storage.integrity import EXPECT_ENV, DigestMismatchError
from tuneops.storage.manifest import ManifestError
from tuneops.storage.safety import UnsafeInputError
from tuneops.workers.common import InvalidInput, safetensors_shards
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

SECRET = b"HF_TOKEN=hf_secret_from_the_worker_environment"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_server() as env:
        yield env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = make_model(root / "base", TinyModelSpec(num_layers=1))
    return {"base": base, "adapter": make_adapter(base, root / "adapter", TinyAdapterSpec())}


def copy_of(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def message(log: Path) -> dict[str, Any]:
    return dict(json.loads(log.read_text()))


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()] if root.exists() else []


def nothing_holds(root: Path, secret: bytes) -> bool:
    return all(secret not in p.read_bytes() for p in files_under(root))


# ------------------------------------------------------------------------------------------ escaping names


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "nested-dotdot"])
def test_s3_keys_that_escape_the_download_folder_are_refused(
    s3_env: dict[str, str], tiny: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    """`prefix//abs/path` (an empty segment, so an absolute name) and `..` keys would be written outside the
    download folder: the whole input is refused before any object is downloaded."""
    client = _client(s3_env)
    bucket = f"hostile-{kind}"
    client.create_bucket(Bucket=bucket)
    for p in sorted(tiny["adapter"].iterdir()):
        client.upload_file(str(p), bucket, f"a1/{p.name}")
    outside = tmp_path / "outside" / "pwned"
    key = {
        "absolute": f"a1/{outside}",  # a1//tmp/.../outside/pwned
        "dotdot": "a1/../../../outside/pwned",
        "nested-dotdot": "a1/sub/../../../../outside/pwned",
    }[kind]
    client.put_object(Bucket=bucket, Key=key, Body=SECRET)
    log, work = tmp_path / "log", tmp_path / "work"
    env = {**s3_env, "TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_WORKDIR": str(work)}
    r = run_cli("inspect", "--adapter", f"s3://{bucket}/a1", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "outside its folder" in message(log)["error"] or "leads outside" in message(log)["error"]
    assert not outside.exists() and not (tmp_path / "outside").exists()
    assert files_under(work) == [], "nothing was downloaded from a refused listing"
    # The serving Pods' fetch refuses it the same way.
    dest = tmp_path / "model"
    f = run_cli("fetch", "--source", f"s3://{bucket}/a1", "--dest", str(dest), env=env)
    assert f.returncode == 2 and not outside.exists()
    assert files_under(dest) == []


def test_hub_file_names_that_escape_are_refused(tiny: dict[str, Path], tmp_path: Path) -> None:
    import threading
    from http.server import ThreadingHTTPServer

    files = {p.name: p.read_bytes() for p in tiny["adapter"].iterdir() if p.is_file()}
    files["../../outside.txt"] = SECRET
    hub = FakeHub("acme/hostile", files, fail_first="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        log = tmp_path / "log"
        env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_DISABLE_XET": "1", "TUNEOPS_WORKDIR": str(tmp_path / "work"),
               "TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_RETRIES": "0"}  # fmt: skip
        r = run_cli("inspect", "--adapter", f"hf://acme/hostile@{hub.sha}", env=env)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "../../outside.txt" in message(log)["error"]
    assert not any(q.startswith("GET /acme/hostile/resolve/") for q in hub.requests), "nothing downloaded"
    assert not (tmp_path / "outside.txt").exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a//b", "./a", ""])
def test_manifest_and_index_names_that_escape_are_not_used(name: str, tmp_path: Path) -> None:
    entry = {"path": name, "sha256": "0" * 64, "size": 1}
    with pytest.raises(ManifestError):
        storage.Manifest.from_json({"kind": "TuneopsArtifact", "files": [entry]})
    (tmp_path / storage.MANIFEST_NAME).write_text(json.dumps({"kind": "TuneopsArtifact", "files": [entry]}))
    assert storage.read_manifest(tmp_path) is None  # not trusted, as if absent
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name or "."}}))
    with pytest.raises((UnsafeInputError, InvalidInput)):
        safetensors_shards(tmp_path)


# ------------------------------------------------------------------------------------------------ links


def with_link(src: Path, dst: Path, secret_file: Path, name: str = "notes.txt") -> Path:
    folder = copy_of(src, dst)
    os.symlink(secret_file, folder / name)
    return folder


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    """Stands in for /proc/self/environ or a mounted token: a file outside the model folder."""
    p = tmp_path / "environ"
    p.write_bytes(SECRET)
    return p


def test_a_link_in_an_adapter_is_refused_and_never_published(
    tiny: dict[str, Path], tmp_path: Path, secret_file: Path
) -> None:
    adapter = with_link(tiny["adapter"], tmp_path / "adapter", secret_file)
    log, out = tmp_path / "log", tmp_path / "published"
    r = run_cli("inspect", "--adapter", str(adapter), "--publish", str(out),
                env={"TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_WORKDIR": str(tmp_path / "work")})  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "symbolic link" in message(log)["error"]
    assert nothing_holds(out, SECRET) and nothing_holds(tmp_path / "work", SECRET)
    assert SECRET.decode() not in r.stdout + r.stderr


@pytest.mark.parametrize("where", ["top", "nested", "folder-link"])
def test_a_link_in_a_model_folder_is_refused_by_fetch(
    tiny: dict[str, Path], tmp_path: Path, secret_file: Path, where: str
) -> None:
    model = copy_of(tiny["base"], tmp_path / "model")
    if where == "top":
        os.symlink(secret_file, model / "tokenizer_extra.json")
    elif where == "nested":
        (model / "sub").mkdir()
        os.symlink(secret_file, model / "sub" / "vocab.txt")
    else:
        os.symlink(secret_file.parent, model / "outside")
    log, dest = tmp_path / "log", tmp_path / "dest"
    r = run_cli("fetch", "--source", f"file://{model}", "--dest", str(dest),
                env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "symbolic link" in message(log)["error"]
    assert nothing_holds(dest, SECRET)


def test_a_special_file_and_a_linked_root_are_refused(tmp_path: Path, secret_file: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    os.mkfifo(model / "weights.bin")
    with pytest.raises(UnsafeInputError, match="not a regular file"):
        storage.fetch(str(model))
    os.symlink(secret_file, tmp_path / "link.gguf")
    with pytest.raises(UnsafeInputError, match="symbolic link"):
        storage.fetch(str(tmp_path / "link.gguf"))


def test_a_link_in_a_base_model_is_refused_by_merge(
    tiny: dict[str, Path], tmp_path: Path, secret_file: Path
) -> None:
    base = with_link(tiny["base"], tmp_path / "base", secret_file, "added_tokens.json")
    log, out = tmp_path / "log", tmp_path / "merged"
    r = run_cli("merge", "--base", str(base), "--adapter", str(tiny["adapter"]), "--output", str(out),
                env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "symbolic link" in message(log)["error"]
    assert nothing_holds(tmp_path / "merged", SECRET)


def test_a_link_in_a_staged_output_is_never_hashed_or_uploaded(tmp_path: Path, secret_file: Path) -> None:
    out = storage.Output.of(str(tmp_path / "out"))
    staging = out.begin()
    (staging / "weights.bin").write_bytes(b"w")
    os.symlink(secret_file, staging / "extra.json")
    with pytest.raises(UnsafeInputError):
        out.commit(format="safetensors")
    out.abort()
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- S3 atomic publication


@pytest.fixture()
def s3(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TUNEOPS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    yield _client(s3_env)


def publish(uri: str, files: dict[str, bytes]) -> tuple[storage.Manifest, str]:
    out = storage.Output.of(uri)
    staging = out.begin()
    for name, data in files.items():
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes(data)
    m = out.commit(format="safetensors", worker="test")
    return m, out.location(m)


V1 = {"config.json": b'{"v": 1}', "model-1.safetensors": b"a" * 4096, "model-2.safetensors": b"b" * 4096}
V2 = {"config.json": b'{"v": 2}', "model-1.safetensors": b"c" * 4096, "model-2.safetensors": b"d" * 4096}


class CutUpload:
    """An S3 client whose upload dies after `allowed` files, like a worker killed mid-upload."""

    def __init__(self, real: Any, allowed: int) -> None:
        self.real, self.allowed = real, allowed

    def upload_file(self, *args: Any, **kwargs: Any) -> None:
        if self.allowed <= 0:
            raise KeyboardInterrupt("killed mid-upload")
        self.allowed -= 1
        self.real.upload_file(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_an_interrupted_s3_upload_leaves_the_previous_artifact_served(
    s3: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="out")
    m1, uri1 = publish("s3://out/team-a/m", V1)
    assert uri1 == "s3://out/team-a/m/" + m1.digest.removeprefix("sha256:")[:16]
    real = remote._s3
    monkeypatch.setattr(remote, "_s3", lambda uri: CutUpload(real(uri), allowed=2))
    with pytest.raises(KeyboardInterrupt):
        publish("s3://out/team-a/m", V2)
    monkeypatch.setattr(remote, "_s3", real)
    # The previous artifact: its folder, manifest and the prefix's pointer are untouched, and it is what
    # both its own URI and the output prefix serve, checked against its recorded digest.
    got = storage.fetch(uri1, expect=m1.digest)
    assert {p.name: p.read_bytes() for p in got.iterdir() if p.name in V1} == V1
    assert storage.Output.of("s3://out/team-a/m").existing() == m1
    monkeypatch.setenv("TUNEOPS_WORKDIR", str(tmp_path / "work2"))
    assert storage.read_manifest(storage.fetch("s3://out/team-a/m")) == m1
    # The new one: a folder with some files and no manifest; nothing points at it.
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="out", Prefix="team-a/m/")["Contents"]]
    partial = {k.split("/")[2] for k in keys} - {m1.digest.removeprefix("sha256:")[:16], remote.POINTER_NAME}
    assert len(partial) == 1
    folder = f"team-a/m/{partial.pop()}"
    assert f"{folder}/{storage.MANIFEST_NAME}" not in keys and any(k.startswith(folder) for k in keys)
    with pytest.raises(storage.InputError, match="without its manifest"):
        storage.fetch(f"s3://out/{folder}")
    # A retry completes it; from then on the prefix serves the new one and the old URI still the old one.
    m2, uri2 = publish("s3://out/team-a/m", V2)
    assert uri2 == f"s3://out/{folder}"
    assert storage.Output.of("s3://out/team-a/m").existing() == m2
    monkeypatch.setenv("TUNEOPS_WORKDIR", str(tmp_path / "work3"))
    assert storage.read_manifest(storage.fetch(uri1, expect=m1.digest)) == m1


SLOW_PUBLISH = """
import sys, time
from tuneops import storage
from tuneops.storage import remote

real = remote._s3


class Slow:
    def __init__(self, client):
        self.client = client

    def upload_file(self, *args, **kwargs):
        self.client.upload_file(*args, **kwargs)
        time.sleep(1)  # room for the kill between two objects

    def __getattr__(self, name):
        return getattr(self.client, name)


remote._s3 = lambda uri: Slow(real(uri))
out = storage.Output.of(sys.argv[1])
staging = out.begin()
for i in range(6):
    (staging / f"model-{i}.safetensors").write_bytes(bytes([i]) * 4096)
out.commit(format="safetensors")
"""


def test_a_worker_sigkilled_mid_upload_leaves_the_previous_artifact_served(
    s3: Any, s3_env: dict[str, str], tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="killed")
    m1, uri1 = publish("s3://killed/m", V1)
    env = {**os.environ, **s3_env, "TUNEOPS_WORKDIR": str(tmp_path / "w")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PUBLISH, "s3://killed/m"], env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="killed", Prefix="m/")["Contents"]]
            new = [k for k in keys if not k.startswith(uri1.removeprefix("s3://killed/")) and "/" in k[2:]]
            if len(new) >= 2 or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the upload finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    folder = new[0].rsplit("/", 1)[0]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="killed", Prefix=f"{folder}/")["Contents"]]
    assert keys and f"{folder}/{storage.MANIFEST_NAME}" not in keys
    assert storage.Output.of("s3://killed/m").existing() == m1
    assert storage.read_manifest(storage.fetch(uri1, expect=m1.digest)) == m1
    with pytest.raises(storage.InputError, match="without its manifest"):
        storage.fetch(f"s3://killed/{folder}")


# ------------------------------------------------------------------------------------- tampered artifacts


def test_a_tampered_local_artifact_is_refused_with_digest_mismatch(tmp_path: Path) -> None:
    m, uri = publish(str(tmp_path / "artifact"), V1)
    assert storage.fetch(uri, expect=m.digest)
    weights = tmp_path / "artifact" / "model-1.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 1  # one byte, same size: a size-only check passes
    weights.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match=r"sha256 of model-1\.safetensors differs"):
        storage.fetch(uri, expect=m.digest)
    with pytest.raises(DigestMismatchError):
        storage.fetch(uri)  # a manifest that does not match its files is never trusted


def test_a_consistently_rewritten_artifact_is_refused_by_its_recorded_digest(tmp_path: Path) -> None:
    """Replacing files and manifest together passes the manifest check, not the digest the operator recorded."""
    m1, uri = publish(str(tmp_path / "artifact"), V1)
    m2, _ = publish(str(tmp_path / "artifact"), V2)
    assert m1.digest != m2.digest
    with pytest.raises(DigestMismatchError, match="differs from the recorded"):
        storage.fetch(uri, expect=m1.digest)


def test_a_tampered_s3_artifact_is_refused_by_fetch_and_ends_as_digest_mismatch(
    s3: Any, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="served")
    m, uri = publish("s3://served/qjob", V1)
    key = uri.removeprefix("s3://served/") + "/model-2.safetensors"
    s3.put_object(Bucket="served", Key=key, Body=b"b" * 4095 + b"X")
    log, dest = tmp_path / "log", tmp_path / "model"
    env = {"TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_WORKDIR": str(tmp_path / "w")}
    r = run_cli("fetch", "--source", uri, "--dest", str(dest), "--expect-digest", m.digest, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    term = message(log)
    assert term["reason"] == Reason.DIGEST_MISMATCH and "model-2.safetensors" in term["error"]
    assert not (dest / ".tuneops-fetched.json").exists()
    # The fetch init container's message becomes the serving Pod's cause, with its own terminal reason.
    status = {"name": "fetch-model", "restartCount": 1, "state": {"terminated": {
        "exitCode": 2, "reason": "Error", "message": log.read_text()}}}  # fmt: skip
    cause = container_cause("svc-abc", status, init=True)
    assert cause is not None and cause.reason == Reason.DIGEST_MISMATCH and cause.terminal
    assert Reason.DIGEST_MISMATCH in TERMINAL_REASONS


def test_a_worker_refuses_a_tampered_input_named_in_its_expected_digests(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    """The renderer passes every input's recorded digest in $TUNEOPS_EXPECT_DIGESTS; the worker checks before
    use, and its DigestMismatch becomes the step's Ready=False reason."""
    m, uri = publish(str(tmp_path / "adapter"), {p.name: p.read_bytes() for p in tiny["adapter"].iterdir()})
    log = tmp_path / "log"
    env = {"TUNEOPS_TERMINATION_LOG": str(log), EXPECT_ENV: json.dumps({uri: m.digest})}
    assert run_cli("inspect", "--adapter", uri, env=env).returncode == 0
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        (tmp_path / "adapter" / "adapter_config.json").read_text().replace('"r": 8', '"r": 9')
    )
    r = run_cli("inspect", "--adapter", uri, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert message(log)["reason"] == Reason.DIGEST_MISMATCH
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "worker", "state": {
        "terminated": {"exitCode": 2, "message": log.read_text()}}}]}}  # fmt: skip
    outcome = observe_job(job, [pod])
    assert outcome.reason == Reason.DIGEST_MISMATCH and "adapter_config.json" in outcome.message
