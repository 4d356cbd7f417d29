"""Artifact URIs: one parser for the renderers (lenient) and the workers (strict), and where a URI is in a Pod."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneops.config import OperatorConfig
from tuneops.render.types import RenderError
from tuneops.render.volumes import pod_path
from tuneops.storage.uri import InvalidURIError, join_uri, parse_uri, with_revision

# raw URI -> the parts it parses into (fields not named keep their defaults).
PARSED = [
    ("hf://org/name", {"scheme": "hf", "repo": "org/name", "revision": "main", "pinned": False, "name": "name"}),
    ("hf://org/name@v1.0", {"scheme": "hf", "repo": "org/name", "revision": "v1.0", "pinned": True, "name": "name"}),
    ("hf://org/name@abc/model-Q4_K_M.gguf", {"repo": "org/name", "revision": "abc", "subpath": "model-Q4_K_M.gguf",
                                             "name": "model-Q4_K_M.gguf"}),
    ("hf://org/name/sub/w.gguf", {"repo": "org/name", "subpath": "sub/w.gguf", "pinned": False}),
    ("s3://bucket/pre/fix", {"scheme": "s3", "bucket": "bucket", "key": "pre/fix", "name": "fix"}),
    ("s3://bucket", {"scheme": "s3", "bucket": "bucket", "key": "", "name": "bucket"}),
    ("pvc://claim/some/path/", {"scheme": "pvc", "claim": "claim", "subpath": "some/path", "name": "path"}),
    ("pvc://claim", {"scheme": "pvc", "claim": "claim", "subpath": "", "name": "claim"}),
    ("file:///abs/model", {"scheme": "file", "file": "/abs/model", "name": "model"}),
    ("/data/models/m", {"scheme": "file", "file": "/data/models/m", "is_local": True}),
    ("relative/dir", {"scheme": "file", "file": "relative/dir"}),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "want"), PARSED, ids=[p[0] for p in PARSED])
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_parts(raw: str, want: dict[str, object], strict: bool) -> None:
    u = parse_uri(raw, strict=strict)
    for attr, value in want.items():
        assert getattr(u, attr) == value, attr


def test_local_paths_follow_the_pvc_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEOPS_PVC_ROOT", "/pvroot")
    assert parse_uri("pvc://claim/a/b").local_path() == Path("/pvroot/claim/a/b")
    assert parse_uri("file:///abs/x").local_path() == Path("/abs/x")
    assert parse_uri("s3://bucket/k").path is None


# Strict parsing refuses what a worker cannot use; lenient parsing splits the same strings without a word.
REFUSED = [
    ("pvc://claim/../etc", "traversal"),
    ("hf://org/name/../x", "traversal"),
    ("gs://bucket/x", "unsupported scheme"),
    ("ftp:thing", "unsupported URI"),
    ("pvc://Bad_Claim/x", "not a valid PersistentVolumeClaim"),
    ("s3://B/x", "not a valid bucket"),
    ("hf://justone", "expected hf://org/name"),
    ("file://relative", "absolute path"),
    ("", "empty"),
]


@pytest.mark.parametrize(("raw", "reason"), REFUSED, ids=[r[0] or "empty" for r in REFUSED])
def test_strict_refuses_and_lenient_does_not(raw: str, reason: str) -> None:
    with pytest.raises(InvalidURIError, match=reason):
        parse_uri(raw)
    parse_uri(raw, strict=False)


def test_lenient_keeps_an_unknown_scheme_without_parts() -> None:
    u = parse_uri("gs://bucket/x", strict=False)
    assert (u.scheme, u.bucket, u.is_local, u.name) == ("gs", "", False, "x")


@pytest.mark.parametrize(
    ("uri", "revision", "want"),
    [
        ("hf://org/name", "v2", "hf://org/name@v2"),
        ("hf://org/name@v1", "v2", "hf://org/name@v1"),
        ("hf://org/name", None, "hf://org/name"),
        ("pvc://claim/m", "v2", "pvc://claim/m"),
    ],
)
def test_with_revision_pins_hf_uris_only(uri: str, revision: str | None, want: str) -> None:
    assert with_revision(uri, revision) == want


def test_join_and_child() -> None:
    assert join_uri("s3://b/k/", "m.gguf") == "s3://b/k/m.gguf"
    assert parse_uri("s3://bucket/k").child("m.gguf").key == "k/m.gguf"
    with pytest.raises(InvalidURIError, match="traversal"):
        parse_uri("s3://bucket/k").child("../m.gguf")


@pytest.mark.parametrize(
    ("uri", "want"),
    [
        ("pvc://models/base/llama", "/data/models/base/llama"),
        ("pvc://models", "/data/models"),
        ("file:///abs/m", "/abs/m"),
    ],
)
def test_pod_path(uri: str, want: str) -> None:
    assert pod_path(uri, OperatorConfig(pvc_mount_root="/data/")) == want


@pytest.mark.parametrize("uri", ["s3://bucket/m", "hf://org/name"])
def test_remote_uris_have_no_pod_path(uri: str) -> None:
    with pytest.raises(RenderError, match="not a file path"):
        pod_path(uri, OperatorConfig())
