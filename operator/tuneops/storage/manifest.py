"""The artifact manifest (tuneops-artifact.json): per-file sha256 and sizes, inputs, tools, parameters, reuse key."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tuneops.storage.safety import UnsafeInputError, inside, open_regular, safe_relative, walk_files

MANIFEST_NAME = "tuneops-artifact.json"
MANIFEST_KIND = "TuneopsArtifact"
MANIFEST_VERSION = 1
_CHUNK = 4 << 20


class ManifestError(RuntimeError):
    """A manifest is missing, malformed or does not match the files next to it."""


def sha256_file(path: Path) -> str:
    """sha256 of a regular file, read without following a link."""
    h = hashlib.sha256()
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def files_digest(files: Iterable[Mapping[str, Any]]) -> str:
    """Content address of a set of files: sha256 over the sorted (path, sha256, size) list."""
    rows = sorted((str(f["path"]), str(f["sha256"]), int(f["size"])) for f in files)
    return "sha256:" + hashlib.sha256(canonical(rows)).hexdigest()


def reuse_key(
    worker: str, inputs: Mapping[str, str], parameters: Mapping[str, Any], tools: Mapping[str, str]
) -> str:
    """What decides whether an existing artifact can stand in for a new run."""
    body = {"worker": worker, "inputs": dict(inputs), "parameters": dict(parameters), "tools": dict(tools)}
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def tool_versions(*dists: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for d in dists:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    try:
        out["tuneops"] = metadata.version("tuneops")
    except metadata.PackageNotFoundError:
        from tuneops import __version__

        out["tuneops"] = __version__
    return out


def list_files(root: Path) -> list[Path]:
    """Files of an artifact, relative to its root, sorted; the manifest itself is not part of the content.
    A link or special file raises (safety.UnsafeInputError): nothing outside the folder is read or published."""
    return [Path(rel) for rel in walk_files(root) if rel.as_posix() != MANIFEST_NAME]


@dataclass
class Manifest:
    """In-memory form of tuneops-artifact.json."""

    format: str
    files: list[dict[str, Any]]
    digest: str
    size_bytes: int
    worker: str = ""
    key: str = ""
    inputs: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None
    tools: dict[str, str] | None = None
    notable: list[str] | None = None  # files a consumer picks from (one per GGUF type, in the asked order)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": MANIFEST_KIND,
            "version": MANIFEST_VERSION,
            "format": self.format,
            "digest": self.digest,
            "sizeBytes": self.size_bytes,
            "worker": self.worker,
            "key": self.key,
            "inputs": self.inputs or {},
            "parameters": self.parameters or {},
            "tools": self.tools or {},
            "notable": self.notable or [],
            "files": self.files,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        if data.get("kind") != MANIFEST_KIND or not isinstance(data.get("files"), list):
            raise ManifestError("not a tuneops artifact manifest")
        files = [dict(f) for f in data["files"]]
        for f in files:
            if not {"path", "sha256", "size"} <= f.keys():
                raise ManifestError("manifest file entry lacks path/sha256/size")
            try:
                safe_relative(str(f["path"]), "manifest")
            except UnsafeInputError as exc:
                raise ManifestError(str(exc)) from None
        return cls(
            format=str(data.get("format", "")),
            files=files,
            digest=str(data.get("digest", "")),
            size_bytes=int(data.get("sizeBytes", 0)),
            worker=str(data.get("worker", "")),
            key=str(data.get("key", "")),
            inputs=dict(data.get("inputs") or {}),
            parameters=dict(data.get("parameters") or {}),
            tools=dict(data.get("tools") or {}),
            notable=list(data.get("notable") or []),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"


def build_manifest(
    root: Path,
    *,
    format: str,
    worker: str = "",
    key: str = "",
    inputs: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    tools: Mapping[str, str] | None = None,
    notable: list[str] | None = None,
) -> Manifest:
    files: list[dict[str, Any]] = []
    for rel in list_files(root):
        p = root / rel
        files.append({"path": rel.as_posix(), "sha256": sha256_file(p), "size": p.stat().st_size})
    return Manifest(
        format=format,
        files=files,
        digest=files_digest(files),
        size_bytes=sum(int(f["size"]) for f in files),
        worker=worker,
        key=key,
        inputs=dict(inputs or {}),
        parameters=dict(parameters or {}),
        tools=dict(tools or {}),
        notable=list(notable or []),
    )


def read_manifest(root: Path) -> Manifest | None:
    p = root / MANIFEST_NAME
    if not p.is_file():
        return None
    try:
        return Manifest.from_json(json.loads(p.read_text()))
    except (ValueError, ManifestError):
        return None


def verify(root: Path, manifest: Manifest, *, hashes: bool = True) -> list[str]:
    """Differences between the manifest and the files on disk (empty when the artifact is complete)."""
    problems = []
    listed = {str(f["path"]) for f in manifest.files}
    for f in manifest.files:
        p = inside(root, str(f["path"]), "manifest")
        if p.is_symlink() or not p.is_file():
            problems.append(f"missing {f['path']}")
        elif p.stat().st_size != int(f["size"]):
            problems.append(f"size of {f['path']} differs")
        elif hashes and sha256_file(p) != f["sha256"]:
            problems.append(f"sha256 of {f['path']} differs")
    for rel in list_files(root):
        # Hidden top-level entries are a downloader's bookkeeping (.cache/huggingface), as in digest_of.
        if rel.as_posix() not in listed and not rel.parts[0].startswith("."):
            problems.append(f"unlisted {rel.as_posix()}")
    if files_digest(manifest.files) != manifest.digest:
        problems.append("digest does not match the file list")
    return problems


def digest_of(root: Path) -> str:
    """Digest of an input: its manifest's (when complete) or one computed from the files."""
    if root.is_file():
        return "sha256:" + sha256_file(root)
    m = read_manifest(root)
    if m is not None and not verify(root, m, hashes=False):
        return m.digest
    files = [
        {"path": rel.as_posix(), "sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
        for rel in list_files(root)
        if not rel.parts[0].startswith(".")
    ]
    return files_digest(files)
