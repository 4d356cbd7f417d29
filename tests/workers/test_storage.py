"""Storage: URI parsing, manifests, atomic publication and reuse of complete artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneops import storage
from tuneops.storage.artifacts import STAGING_MARK, publish_dir
from tuneops.storage.manifest import MANIFEST_NAME, build_manifest, digest_of, verify

pytestmark = pytest.mark.workers


@pytest.mark.parametrize(
    ("raw", "scheme", "expect"),
    [
        ("/data/models/m", "file", {"path": Path("/data/models/m")}),
        ("relative/dir", "file", {"path": Path("relative/dir")}),
        ("file:///abs/x", "file", {"path": Path("/abs/x")}),
        ("pvc://models/base/llama", "pvc", {"path": Path("/pvroot/models/base/llama")}),
        ("pvc://models", "pvc", {"path": Path("/pvroot/models")}),
        ("s3://bucket/pre/fix", "s3", {"bucket": "bucket", "key": "pre/fix"}),
        ("s3://bucket", "s3", {"bucket": "bucket", "key": ""}),
        ("hf://org/name", "hf", {"repo": "org/name", "revision": "main", "subpath": ""}),
        ("hf://org/name@v1.0", "hf", {"repo": "org/name", "revision": "v1.0"}),
        (
            "hf://org/name@abc123/model-Q4_K_M.gguf",
            "hf",
            {"revision": "abc123", "subpath": "model-Q4_K_M.gguf"},
        ),
    ],
)
def test_parse_uri(raw: str, scheme: str, expect: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEOPS_PVC_ROOT", "/pvroot")
    u = storage.parse_uri(raw)
    assert u.scheme == scheme
    for k, v in expect.items():
        assert getattr(u, k) == v, k


def test_pvc_default_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEOPS_PVC_ROOT", raising=False)
    assert storage.parse_uri("pvc://claim/a/b").path == Path("/mnt/pvc/claim/a/b")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("pvc://claim/../etc", "traversal"),
        ("pvc://claim/a/../../b", "traversal"),
        ("file:///data/../etc/passwd", "traversal"),
        ("../outside", "traversal"),
        ("s3://bucket/a/../b", "traversal"),
        ("hf://org/name/../x", "traversal"),
        ("gs://bucket/x", "unsupported scheme"),
        ("http://example/x", "unsupported scheme"),
        ("ftp:thing", "unsupported URI"),
        ("pvc://Bad_Claim/x", "not a valid PersistentVolumeClaim"),
        ("hf://justone", "expected hf://org/name"),
        ("file://relative", "absolute path"),
        ("", "empty"),
    ],
)
def test_rejected_uris(raw: str, reason: str) -> None:
    with pytest.raises(storage.InvalidURIError, match=reason):
        storage.parse_uri(raw)


def _artifact(root: Path, content: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in content.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_manifest_digest_and_verify(tmp_path: Path) -> None:
    a = _artifact(tmp_path / "a", {"x.bin": b"one", "sub/y.txt": b"two"})
    m = build_manifest(a, format="safetensors", worker="test", parameters={"p": 1})
    assert [f["path"] for f in m.files] == ["sub/y.txt", "x.bin"]
    assert m.size_bytes == 6 and m.digest.startswith("sha256:")
    (a / MANIFEST_NAME).write_text(m.dumps())
    assert verify(a, m) == []
    # The digest depends on content only: the same files elsewhere give the same digest.
    b = _artifact(tmp_path / "b", {"x.bin": b"one", "sub/y.txt": b"two"})
    assert digest_of(b) == m.digest == digest_of(a)
    (a / "x.bin").write_bytes(b"ONE")
    assert verify(a, m) == ["sha256 of x.bin differs"]
    (a / "extra").write_bytes(b"")
    (a / "sub/y.txt").unlink()
    assert sorted(verify(a, m)) == ["missing sub/y.txt", "sha256 of x.bin differs", "unlisted extra"]


def test_output_publishes_atomically_and_replaces(tmp_path: Path) -> None:
    final = tmp_path / "out" / "model"
    out = storage.Output.of(str(final))
    staging = out.begin()
    assert staging.parent == final.parent and staging.name.startswith(f".model{STAGING_MARK}")
    (staging / "w.bin").write_bytes(b"v1")
    assert not final.exists(), "nothing is visible before commit"
    m1 = out.commit(format="safetensors", key="k1")
    assert (final / "w.bin").read_bytes() == b"v1"
    assert json.loads((final / MANIFEST_NAME).read_text())["digest"] == m1.digest
    out2 = storage.Output.of(str(final))
    s2 = out2.begin()
    (s2 / "w2.bin").write_bytes(b"v2")
    m2 = out2.commit(format="safetensors", key="k2")
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_NAME, "w2.bin"]
    assert m2.digest != m1.digest
    assert [p.name for p in final.parent.iterdir()] == ["model"], "no staging or old copies left"


def test_publish_without_exchange_support_keeps_a_complete_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tuneops.storage.artifacts._exchange", lambda a, b: False)
    final = _artifact(tmp_path / "final", {"old": b"1"})
    staging = _artifact(tmp_path / "staging", {"new": b"2"})
    publish_dir(staging, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_reuse_needs_same_key_and_intact_files(tmp_path: Path) -> None:
    final = tmp_path / "art"
    out = storage.Output.of(str(final))
    (out.begin() / "w.bin").write_bytes(b"weights")
    out.commit(format="gguf", key="sha256:abc")
    assert storage.Output.of(str(final)).reusable("sha256:abc") is not None
    assert storage.Output.of(str(final)).reusable("sha256:other") is None
    (final / "w.bin").write_bytes(b"WEIGHTS")  # same size, different bytes
    assert storage.Output.of(str(final)).reusable("sha256:abc") is None


def test_abort_and_stale_staging_cleanup(tmp_path: Path) -> None:
    final = tmp_path / "art"
    out = storage.Output.of(str(final))
    s = out.begin()
    out.abort()
    assert not s.exists()
    stale = tmp_path / f".art{STAGING_MARK}123-dead"
    stale.mkdir()
    out2 = storage.Output.of(str(final))
    out2.begin()
    assert not stale.exists()
    out2.abort()


def test_fetch_missing_local_path_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(storage.InputError, match="does not exist"):
        storage.fetch(str(tmp_path / "nope"))
