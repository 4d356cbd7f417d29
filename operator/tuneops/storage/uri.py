"""The one parser of artifact URIs (file, plain path, pvc://claim/path, s3://bucket/prefix, hf://org/name@revision).

The workers parse strictly: a URI they cannot use is refused with a reason. The renderers parse what the API
already admitted (scheme allow-list, no `..`) and only need its parts, so they parse leniently: the same
split, without the checks, never raising.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DEFAULT_PVC_ROOT = "/mnt/pvc"
SCHEMES = ("file", "pvc", "s3", "hf")
DEFAULT_REVISION = "main"

_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$")
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]*$")
_SCHEME_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


class InvalidURIError(ValueError):
    """A URI the workers cannot use: unknown scheme, path traversal, malformed parts."""


class InputError(RuntimeError):
    """An input URI points at nothing usable (missing path, object, prefix or repository)."""


@dataclass(frozen=True)
class ArtifactURI:
    """A parsed URI.

    file: `file` is the path as written. pvc: `claim`, and `subpath` inside it. s3: `bucket` and `key`.
    hf: `repo` (org/name), `revision` ("main" unless the URI names one; `pinned` says whether it does) and
    `subpath` inside the repository.
    """

    raw: str
    scheme: str
    file: str = ""
    claim: str = ""
    bucket: str = ""
    key: str = ""
    repo: str = ""
    revision: str = DEFAULT_REVISION
    pinned: bool = False
    subpath: str = ""

    @property
    def is_local(self) -> bool:
        return self.scheme in ("file", "pvc")

    @property
    def path(self) -> Path | None:
        """The local path of a file or pvc URI in this process (claims under $TUNEOPS_PVC_ROOT)."""
        if self.scheme == "file":
            return Path(self.file)
        if self.scheme == "pvc":
            return pvc_root() / self.claim / self.subpath
        return None

    @property
    def name(self) -> str:
        """The last segment of what the URI points at, without a revision (hf://org/name@v1 -> name)."""
        where = {
            "file": self.file,
            "pvc": f"{self.claim}/{self.subpath}",
            "s3": f"{self.bucket}/{self.key}",
            "hf": f"{self.repo}/{self.subpath}",
        }.get(self.scheme, self.raw)
        return where.rstrip("/").rsplit("/", 1)[-1]

    def local_path(self) -> Path:
        if self.path is None:
            raise InvalidURIError(f"{self.raw!r} is not a local path")
        return self.path

    def child(self, name: str) -> ArtifactURI:
        """The URI of a file inside this artifact."""
        _check_relative(name, self.raw)
        return parse_uri(join_uri(self.raw, name))


def join_uri(uri: str, name: str) -> str:
    """The URI of `name` inside the artifact at `uri`."""
    return f"{uri.rstrip('/')}/{name}"


def with_revision(uri: str, revision: str | None) -> str:
    """hf://org/name + revision -> hf://org/name@revision (a revision already in the URI wins)."""
    u = parse_uri(uri, strict=False)
    if u.scheme != "hf" or not revision or u.pinned:
        return uri
    return f"{uri}@{revision}"


def _check_relative(path: str, raw: str) -> PurePosixPath:
    parts = PurePosixPath(path).parts
    if ".." in parts:
        raise InvalidURIError(f"{raw!r}: path traversal ('..') is not allowed")
    return PurePosixPath(path)


def pvc_root() -> Path:
    return Path(os.environ.get("TUNEOPS_PVC_ROOT") or DEFAULT_PVC_ROOT)


def parse_uri(raw: str, *, strict: bool = True) -> ArtifactURI:
    """Parses a URI; a string without a scheme is a local path.

    Strict (the default) raises InvalidURIError with a clear reason for anything a worker cannot use. Lenient
    parsing splits the same way and never raises (an unknown scheme comes back with no parts).
    """
    if strict and (not raw or not raw.strip()):
        raise InvalidURIError("empty URI")
    if "://" not in raw:
        if strict and _SCHEME_LIKE.match(raw) and not _WINDOWS_DRIVE.match(raw):
            raise InvalidURIError(f"{raw!r}: unsupported URI (use one of {', '.join(SCHEMES)} or a path)")
        return _file(raw, raw, strict)
    scheme, _, rest = raw.partition("://")
    scheme = scheme.lower()
    if scheme == "file":
        if strict and not rest.startswith("/"):
            raise InvalidURIError(f"{raw!r}: file URIs need an absolute path (file:///abs/path)")
        return _file(raw, rest, strict)
    if scheme == "pvc":
        return _pvc(raw, rest, strict)
    if scheme == "s3":
        return _s3(raw, rest, strict)
    if scheme == "hf":
        return _hf(raw, rest, strict)
    if strict:
        raise InvalidURIError(f"{raw!r}: unsupported scheme {scheme!r} (use one of {', '.join(SCHEMES)})")
    return ArtifactURI(raw=raw, scheme=scheme)


def _file(raw: str, path: str, strict: bool) -> ArtifactURI:
    if strict:
        _check_relative(path, raw)
    return ArtifactURI(raw=raw, scheme="file", file=path)


def _pvc(raw: str, rest: str, strict: bool) -> ArtifactURI:
    claim, _, sub = rest.partition("/")
    if strict:
        if not _CLAIM.match(claim):
            raise InvalidURIError(f"{raw!r}: {claim!r} is not a valid PersistentVolumeClaim name")
        _check_relative(sub.strip("/"), raw)
    return ArtifactURI(raw=raw, scheme="pvc", claim=claim, subpath=sub.strip("/"))


def _s3(raw: str, rest: str, strict: bool) -> ArtifactURI:
    bucket, _, key = rest.partition("/")
    if strict:
        if not _BUCKET.match(bucket):
            raise InvalidURIError(f"{raw!r}: {bucket!r} is not a valid bucket name")
        _check_relative(key, raw)
    return ArtifactURI(raw=raw, scheme="s3", bucket=bucket, key=key.strip("/"))


def _hf(raw: str, rest: str, strict: bool) -> ArtifactURI:
    """hf://org/name[/subpath] or hf://org/name@revision[/subpath]."""
    body, at, revision = rest.partition("@")
    parts = body.strip("/").split("/")
    sub = ""
    if "/" in revision:
        revision, _, sub = revision.partition("/")
    if strict and (len(parts) < 2 or not all(_HF_PART.match(p) for p in parts[:2])):
        raise InvalidURIError(f"{raw!r}: expected hf://org/name[@revision]")
    if len(parts) > 2:
        sub = "/".join(parts[2:])
    if strict:
        _check_relative(sub, raw)
    return ArtifactURI(
        raw=raw,
        scheme="hf",
        repo="/".join(parts[:2]),
        revision=revision or DEFAULT_REVISION,
        pinned=bool(at),
        subpath=sub,
    )
