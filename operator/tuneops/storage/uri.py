"""Parsing of artifact URIs (file, plain path, pvc://claim/path, s3://bucket/prefix, hf://org/name@revision)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_PVC_ROOT = "/mnt/pvc"
SCHEMES = ("file", "pvc", "s3", "hf")

_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")


class InvalidURIError(ValueError):
    """A URI the workers cannot use: unknown scheme, path traversal, malformed parts."""


class InputError(RuntimeError):
    """An input URI points at nothing usable (missing path, object, prefix or repository)."""


@dataclass(frozen=True)
class ArtifactURI:
    """A parsed URI. `path` is the local path for file/pvc; bucket/key for s3; repo/revision/subpath for hf."""

    raw: str
    scheme: str
    path: Path | None = None
    bucket: str = ""
    key: str = ""
    repo: str = ""
    revision: str = ""
    subpath: str = ""

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "pvc")

    def local_path(self) -> Path:
        if self.path is None:
            raise InvalidURIError(f"{self.raw!r} is not a local path")
        return self.path

    def child(self, name: str) -> ArtifactURI:
        """The URI of a file inside this artifact."""
        _check_relative(name, self.raw)
        return parse_uri(f"{self.raw.rstrip('/')}/{name}")


def _check_relative(path: str, raw: str) -> PurePosixPath:
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise InvalidURIError(f"{raw!r}: path traversal ('..') is not allowed")
    return PurePosixPath(path)


def pvc_root() -> Path:
    return Path(os.environ.get("TUNEOPS_PVC_ROOT") or DEFAULT_PVC_ROOT)


def parse_uri(raw: str) -> ArtifactURI:
    """Parses a URI; a string without a scheme is a local path. Raises InvalidURIError with a clear reason."""
    if not raw or not raw.strip():
        raise InvalidURIError("empty URI")
    if "://" not in raw:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:", raw) and not re.match(r"^[A-Za-z]:[\\/]", raw):
            raise InvalidURIError(f"{raw!r}: unsupported URI (use one of {', '.join(SCHEMES)} or a path)")
        _check_relative(raw, raw)
        return ArtifactURI(raw=raw, scheme="file", path=Path(raw))
    scheme, _, rest = raw.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        if not rest.startswith("/"):
            raise InvalidURIError(f"{raw!r}: file URIs need an absolute path (file:///abs/path)")
        _check_relative(rest, raw)
        return ArtifactURI(raw=raw, scheme="file", path=Path(rest))
    if scheme == "pvc":
        claim, _, sub = rest.partition("/")
        if not _CLAIM.match(claim):
            raise InvalidURIError(f"{raw!r}: {claim!r} is not a valid PersistentVolumeClaim name")
        rel = _check_relative(sub.strip("/"), raw)
        return ArtifactURI(raw=raw, scheme="pvc", path=pvc_root() / claim / rel)
    if scheme == "s3":
        bucket, _, key = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise InvalidURIError(f"{raw!r}: {bucket!r} is not a valid bucket name")
        _check_relative(key, raw)
        return ArtifactURI(raw=raw, scheme="s3", bucket=bucket, key=key.strip("/"))
    if scheme == "hf":
        body, _, revision = rest.partition("@")
        parts = body.strip("/").split("/")
        sub = ""
        if "/" in revision:
            revision, _, sub = revision.partition("/")
        if len(parts) < 2 or not all(_HF_PART.match(p) for p in parts[:2]):
            raise InvalidURIError(f"{raw!r}: expected hf://org/name[@revision]")
        if len(parts) > 2:
            sub = "/".join(parts[2:])
        _check_relative(sub, raw)
        return ArtifactURI(
            raw=raw,
            scheme="hf",
            repo="/".join(parts[:2]),
            revision=revision or "main",
            subpath=sub,
        )
    raise InvalidURIError(f"{raw!r}: unsupported scheme {scheme!r} (use one of {', '.join(SCHEMES)})")
