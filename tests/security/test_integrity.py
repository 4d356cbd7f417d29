"""Integrity is checked by digest wherever something already there stands in for new work, and hidden files count.

The audit point: reusing an existing output, and `digest_of`, compared sizes, not digests; hidden top-level
files were never verified. Each test below puts a file of the right size with other bytes (or a hidden file)
where a size check would have passed, and shows it detected: not reused, downloaded again, or refused.

S3 runs on moto's server (loopback, stopped by PID), the Hub on the local fake of tests/workers/test_remote.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import run_cli
from tests.workers.test_remote import FakeHub, _client, _handler, moto_server
from tuneops import storage
from tuneops.storage import manifest as manifest_module
from tuneops.storage import remote
from tuneops.storage.integrity import DigestMismatchError
from tuneops.storage.manifest import BOOKKEEPING, FETCH_MARKER, build_manifest, digest_of, verify
from tuneops.storage.uri import parse_uri
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model


def flipped(data: bytes, at: int = 0) -> bytes:
    """The same length, one bit different: a size check cannot tell them apart."""
    out = bytearray(data)
    out[at] ^= 1
    return bytes(out)


def write(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def publish(uri: str, files: dict[str, bytes], key: str = "") -> tuple[storage.Manifest, str]:
    out = storage.Output.of(uri)
    staging = out.begin()
    write(staging, files)
    m = out.commit(format="safetensors", worker="test", key=key)
    return m, out.location(m)


V1 = {
    "config.json": b'{"v": 1}',
    "model.safetensors": b"w" * 8192,
    ".hidden-settings.json": b'{"h": 1}',
    "sub/.nested": b"n" * 64,
}


# --------------------------------------------------------------------------------- manifests and digests


def test_manifests_list_hidden_files_and_leave_out_only_the_bookkeeping(tmp_path: Path) -> None:
    root = write(tmp_path / "a", V1)
    (root / FETCH_MARKER).write_text("{}")  # the fetch marker: bookkeeping
    m = build_manifest(root, format="safetensors")
    assert [f["path"] for f in m.files] == [".hidden-settings.json", "config.json", "model.safetensors",
                                            "sub/.nested"]  # fmt: skip
    assert {storage.MANIFEST_NAME, FETCH_MARKER} == BOOKKEEPING
    (root / storage.MANIFEST_NAME).write_text(m.dumps())
    assert verify(root, m) == [] and digest_of(root) == m.digest


@pytest.mark.parametrize("name", [".evil.py", ".cache/huggingface/x", "sub/.evil"])
def test_a_hidden_file_added_is_detected(tmp_path: Path, name: str) -> None:
    root = write(tmp_path / "a", V1)
    m = build_manifest(root, format="safetensors")
    (root / storage.MANIFEST_NAME).write_text(m.dumps())
    write(root, {name: b"x"})
    assert verify(root, m) == [f"unlisted {name}"]
    assert digest_of(root) != m.digest
    with pytest.raises(DigestMismatchError, match=f"unlisted {name}"):
        storage.fetch(str(root))


@pytest.mark.parametrize("name", [".hidden-settings.json", "sub/.nested", "model.safetensors"])
def test_a_file_changed_with_its_size_kept_is_detected(tmp_path: Path, name: str) -> None:
    root = write(tmp_path / "a", V1)
    m = build_manifest(root, format="safetensors")
    (root / storage.MANIFEST_NAME).write_text(m.dumps())
    assert digest_of(root) == m.digest
    (root / name).write_bytes(flipped(V1[name]))
    assert verify(root, m) == [f"sha256 of {name} differs"]
    # digest_of used to accept a manifest whose sizes matched: now its digest is that of the bytes on disk.
    assert digest_of(root) != m.digest
    with pytest.raises(DigestMismatchError, match="sha256 of"):
        storage.fetch(str(root), expect=m.digest)


def test_the_digest_of_a_folder_without_manifest_covers_hidden_files(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"config.json": b"{}"})
    before = digest_of(a)
    write(a, {".extra": b"1"})
    assert digest_of(a) != before
    (a / ".extra").write_bytes(b"2")
    changed = digest_of(a)
    (a / ".extra").write_bytes(b"1")
    assert changed != digest_of(a)


def test_a_remembered_hash_is_not_used_once_the_file_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashes are remembered per (device, inode, size, mtime, ctime): putting mtime back after a same-size write
    does not hide the write (ctime moved)."""
    monkeypatch.setattr(manifest_module, "_RACY_NS", 0)  # remember even a fresh file
    p = tmp_path / "w.bin"
    p.write_bytes(b"a" * 4096)
    st = p.stat()
    time.sleep(0.05)
    first = manifest_module.sha256_file(p)
    time.sleep(0.05)
    p.write_bytes(b"b" * 4096)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns
    assert manifest_module.sha256_file(p) == hashlib.sha256(b"b" * 4096).hexdigest() != first


# ------------------------------------------------------------------------------------ reuse of an output


def test_a_local_output_of_the_same_size_with_other_bytes_is_not_reused(tmp_path: Path) -> None:
    m, uri = publish(str(tmp_path / "out"), V1, key="sha256:k")
    out = storage.Output.of(uri)
    assert out.reusable("sha256:k") == m and out.existing() == m
    # Written moments after it was hashed (the same timestamp tick): still seen.
    (tmp_path / "out" / "model.safetensors").write_bytes(flipped(V1["model.safetensors"], 4000))
    assert out.reusable("sha256:k") is None and out.existing() is None
    (tmp_path / "out" / "model.safetensors").write_bytes(V1["model.safetensors"])
    assert out.reusable("sha256:k") == m
    write(tmp_path / "out", {".injected": b"x"})
    assert out.reusable("sha256:k") is None, "a hidden file added to an output is seen"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = make_model(root / "base", TinyModelSpec(num_layers=1))
    return {"base": base, "adapter": make_adapter(base, root / "adapter", TinyAdapterSpec())}


def test_merge_does_not_reuse_a_tampered_output_and_makes_it_again(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    out, log = tmp_path / "merged", tmp_path / "log"
    args = ("merge", "--base", str(tiny["base"]), "--adapter", str(tiny["adapter"]), "--output", str(out),
            "--dtype", "float32")  # fmt: skip
    env = {"TUNEOPS_TERMINATION_LOG": str(log)}
    first = run_cli(*args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    made = json.loads(log.read_text())["artifact"]
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_cli(*args, env=env)
    assert again.returncode == 0 and json.loads(log.read_text())["artifact"]["reused"] is True
    weights = next(p for p in out.iterdir() if p.suffix == ".safetensors")
    weights.write_bytes(flipped(weights.read_bytes(), 1000))
    third = run_cli(*args, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    art = json.loads(log.read_text())["artifact"]
    assert art.get("reused") is None, "a same-size output with other bytes is made again"
    assert (
        "does not match its manifest" in third.stderr and f"sha256 of {weights.name} differs" in third.stderr
    )
    assert art["digest"] == made["digest"]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good, "bit-identical to the first run"


# ---------------------------------------------------------------------------------------------- fetch


def test_fetch_does_not_reuse_a_model_folder_that_changed(tmp_path: Path) -> None:
    m, uri = publish(str(tmp_path / "src"), V1)
    dest, log = tmp_path / "model", tmp_path / "log"
    env = {"TUNEOPS_TERMINATION_LOG": str(log)}
    fetch = ("fetch", "--source", uri, "--dest", str(dest), "--expect-digest", m.digest)
    assert run_cli(*fetch, env=env).returncode == 0
    assert (dest / ".hidden-settings.json").read_bytes() == V1[".hidden-settings.json"], (
        "hidden files fetched"
    )
    assert run_cli(*fetch, env=env).returncode == 0
    assert json.loads(log.read_text())["artifact"]["reused"] is True
    for change in ({"model.safetensors": flipped(V1["model.safetensors"])}, {".injected.py": b"import os"}):
        write(dest, change)
        r = run_cli(*fetch, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        art = json.loads(log.read_text())["artifact"]
        assert art.get("reused") is None and art["digest"] == m.digest
        assert "fetching again" in r.stderr
        assert (dest / "model.safetensors").read_bytes() == V1["model.safetensors"]
        assert not (dest / ".injected.py").exists()


# ------------------------------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_server() as env:
        yield env


@pytest.fixture()
def s3(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TUNEOPS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setattr(remote, "BACKOFF_S", 0.01)
    return _client(s3_env)


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.parametrize("with_checksum", [True, False])
def test_a_kept_download_of_the_same_size_with_other_bytes_is_downloaded_again(
    s3: Any, with_checksum: bool
) -> None:
    """New bytes of the same size under the same key (new adapter weights of the same shapes): the file from the
    previous download is not kept on its size."""
    bucket = f"keep-{str(with_checksum).lower()}"
    s3.create_bucket(Bucket=bucket)
    old, new = b"a" * 5000, b"b" * 5000
    extra = {"ChecksumAlgorithm": "SHA256"} if with_checksum else {}
    s3.put_object(Bucket=bucket, Key="adapter/w.bin", Body=old, **extra)
    got = storage.fetch(f"s3://{bucket}/adapter")
    kept = (got / "w.bin").stat()
    # Unchanged: kept when S3's checksum proves it (no download); without a checksum it is downloaded again.
    assert (storage.fetch(f"s3://{bucket}/adapter") / "w.bin").read_bytes() == old
    assert ((got / "w.bin").stat().st_ino == kept.st_ino) is with_checksum
    extra = {"ChecksumAlgorithm": "SHA256"} if with_checksum else {}
    s3.put_object(Bucket=bucket, Key="adapter/w.bin", Body=new, **extra)
    assert (storage.fetch(f"s3://{bucket}/adapter") / "w.bin").read_bytes() == new
    # An object no longer under the prefix leaves the download folder.
    s3.put_object(Bucket=bucket, Key="adapter/.extra", Body=b"x")
    assert (storage.fetch(f"s3://{bucket}/adapter") / ".extra").read_bytes() == b"x"
    s3.delete_object(Bucket=bucket, Key="adapter/.extra")
    assert not (storage.fetch(f"s3://{bucket}/adapter") / ".extra").exists()


def test_a_tampered_local_copy_of_an_s3_artifact_is_downloaded_again(s3: Any, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="artifacts")
    m, uri = publish("s3://artifacts/m", V1)
    got = storage.fetch(uri, expect=m.digest)
    (got / "sub" / ".nested").write_bytes(flipped(V1["sub/.nested"]))
    again = storage.fetch(uri, expect=m.digest)
    assert (again / "sub" / ".nested").read_bytes() == V1["sub/.nested"]


def test_an_s3_output_with_a_same_size_object_of_other_bytes_is_not_reused(s3: Any) -> None:
    s3.create_bucket(Bucket="outputs")
    m, uri = publish("s3://outputs/merged", V1, key="sha256:k")
    out = storage.Output.of("s3://outputs/merged")
    assert out.reusable("sha256:k") == m and out.existing() == m
    folder = parse_uri(uri)
    key = f"{folder.key}/model.safetensors"
    tampered = flipped(V1["model.safetensors"], 5)
    # Without a checksum: read and hashed. With one (S3 computes it on the bytes): proven different.
    s3.put_object(Bucket="outputs", Key=key, Body=tampered)
    assert out.reusable("sha256:k") is None and out.existing() is None
    s3.put_object(Bucket="outputs", Key=key, Body=tampered, ChecksumAlgorithm="SHA256")
    assert remote.s3_verify(folder, m) == ["sha256 of model.safetensors differs"]
    # Publishing the same content again uploads the object S3 does not prove, and the artifact is whole again.
    publish("s3://outputs/merged", V1, key="sha256:k")
    assert out.reusable("sha256:k") == m
    obj = s3.get_object(Bucket="outputs", Key=key)["Body"].read()
    assert obj == V1["model.safetensors"]
    # A hidden object added to the artifact's folder: not reused, and removed when it is published again.
    s3.put_object(Bucket="outputs", Key=f"{folder.key}/.injected", Body=b"x")
    assert remote.s3_verify(folder, m) == ["unlisted .injected"]
    assert out.reusable("sha256:k") is None
    publish("s3://outputs/merged", V1, key="sha256:k")
    assert out.reusable("sha256:k") == m


def test_s3_checksums_stand_in_for_a_read_only_when_they_are_whole_object_sha256(s3: Any) -> None:
    s3.create_bucket(Bucket="checksums")
    data = b"z" * 100
    s3.put_object(Bucket="checksums", Key="one", Body=data, ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket="checksums", Key="crc", Body=data)  # boto3's default CRC32: not a digest
    client = remote._s3(parse_uri("s3://checksums/one"))
    assert remote._s3_sha256(client, "checksums", "one") == hashlib.sha256(data).hexdigest()
    assert remote._s3_sha256(client, "checksums", "crc") is None

    class Head:
        def __init__(self, head: dict[str, Any]) -> None:
            self.head = head

        def head_object(self, **_: Any) -> dict[str, Any]:
            return self.head

    composite = {"ChecksumSHA256": b64sha(data), "ETag": '"abc-3"'}
    assert remote._s3_sha256(Head(composite), "b", "k") is None, "a multipart object's checksum of checksums"
    marked = {"ChecksumSHA256": b64sha(data) + "-3", "ETag": '"abc"', "ChecksumType": "COMPOSITE"}
    assert remote._s3_sha256(Head(marked), "b", "k") is None


# ------------------------------------------------------------------------------------------------ Hub


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    files = {k: v for k, v in V1.items()}
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    fake = FakeHub("acme/artifact", files, fail_first="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("TUNEOPS_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("TUNEOPS_RETRIES", "0")
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_a_hub_download_counts_hidden_files_and_drops_only_the_hubs_bookkeeping(
    hub: FakeHub, tmp_path: Path
) -> None:
    got = storage.fetch(f"hf://acme/artifact@{hub.sha}")
    names = sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file())
    assert names == [".hidden-settings.json", "config.json", "model.safetensors", "sub/.nested"]
    assert digest_of(got) == digest_of(write(tmp_path / "same", V1))
    # A file changed in the download folder is not kept on its size: huggingface_hub's records are gone, so
    # the next download fetches it again.
    (got / "config.json").write_bytes(flipped(V1["config.json"]))
    again = storage.fetch(f"hf://acme/artifact@{hub.sha}")
    assert (again / "config.json").read_bytes() == V1["config.json"]


def test_a_hub_artifact_is_reused_only_when_its_files_have_the_manifests_sha256(
    hub: FakeHub, tmp_path: Path
) -> None:
    m = build_manifest(write(tmp_path / "a", V1), format="safetensors", key="sha256:k")
    hub.files[storage.MANIFEST_NAME] = m.dumps().encode()
    uri = parse_uri(f"hf://acme/artifact@{hub.sha}")
    assert remote.hf_verify(uri, m) == [], "the Hub's own .gitattributes is not an unlisted file"
    assert storage.Output.of(uri.raw).reusable("sha256:k") == m
    hub.files["sub/.nested"] = flipped(V1["sub/.nested"])
    assert remote.hf_verify(uri, m) == ["sha256 of sub/.nested differs"]
    hub.files["sub/.nested"] = V1["sub/.nested"]
    hub.files[".injected"] = b"x"
    assert remote.hf_verify(uri, m) == ["unlisted .injected"]
    assert storage.Output.of(uri.raw).reusable("sha256:k") is None


def test_copy_helpers_leave_outputs_as_they_were(tmp_path: Path) -> None:
    """Side files copied from a base model into a merged output still leave hidden files out: outputs are
    bit-identical to before; only what is verified changed."""
    from tuneops.workers.common import copy_model_side_files

    src = write(tmp_path / "src", {"tokenizer.json": b"{}", ".DS_Store": b"x"})
    dst = tmp_path / "dst"
    dst.mkdir()
    assert copy_model_side_files(src, dst) == ["tokenizer.json"]
    shutil.rmtree(dst)
