"""The artifact manifest (tuneops-artifact.json): per-file sha256 and sizes, inputs, tools, parameters, reuse key.

What an artifact's content is: every regular file under its folder, hidden ones (`.name`, at the top or below)
included, except the tool's own bookkeeping at the top level (BOOKKEEPING):

- `tuneops-artifact.json`, the manifest itself (it holds the digests, so it cannot be one of its own files);
- `.tuneops-fetched.json`, the marker the serving Pods' fetch writes into a model folder once the download is
  complete and checked: it records that folder's digest, so it is written after the digest is computed.

Nothing else is left out: a hidden file is listed, hashed and verified like any other, and an unlisted one
makes `verify` report the folder. (A Hub download's own bookkeeping, huggingface_hub's `.cache/huggingface`
and the Hub's `.gitattributes`, is removed by storage.remote before a download is checked.)

Digests, not sizes: `verify` re-hashes every file, and so does `digest_of` before it trusts a manifest. A file
this process already hashed is not read again while its device, inode, size, mtime and ctime are unchanged
(ctime is set by the kernel on every write and cannot be set back from user space); a file whose timestamps
were within a few seconds of the clock when it was hashed is never remembered, so a write in the same
timestamp tick cannot go unseen (git's "racy clean" rule).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tuneops.storage.safety import UnsafeInputError, inside, open_regular, safe_relative, walk_files

MANIFEST_NAME = "tuneops-artifact.json"
MANIFEST_KIND = "TuneopsArtifact"
MANIFEST_VERSION = 1
# The marker `tuneops worker fetch` writes into a serving Pod's model folder (workers/fetch.py).
FETCH_MARKER = ".tuneops-fetched.json"
# Top-level names that are the tool's bookkeeping, not content (see the module docstring).
BOOKKEEPING = frozenset({MANIFEST_NAME, FETCH_MARKER})
_CHUNK = 4 << 20
# A file whose ctime/mtime is this close to the clock when hashed may still change within the same timestamp
# tick (coarse kernel clocks, 2 s on some filesystems): its hash is not remembered.
_RACY_NS = 3_000_000_000
_MEMO_MAX = 1 << 16
_memo: dict[tuple[int, int, int, int, int], str] = {}


class ManifestError(RuntimeError):
    """A manifest is missing, malformed or does not match the files next to it."""


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_file(path: Path) -> str:
    """sha256 of a regular file, read without following a link (see the module docstring on re-reads)."""
    with os.fdopen(open_regular(path), "rb") as f:
        before = os.fstat(f.fileno())
        key = _identity(before)
        if stat.S_ISREG(before.st_mode) and key in _memo:
            return _memo[key]
        started = time.time_ns()
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        digest = h.hexdigest()
        after = os.fstat(f.fileno())
    settled = max(before.st_mtime_ns, before.st_ctime_ns) < started - _RACY_NS
    if settled and _identity(after) == key:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        _memo[key] = digest
    return digest


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
    """Files of an artifact, relative to its root, sorted: hidden files included, the top-level BOOKKEEPING
    (the manifest, the fetch marker) left out. A link or special file raises (safety.UnsafeInputError):
    nothing outside the folder is read or published."""
    return [Path(rel) for rel in walk_files(root) if rel.as_posix() not in BOOKKEEPING]


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


def verify(root: Path, manifest: Manifest) -> list[str]:
    """Differences between the manifest and the files on disk, file by file by sha256 (empty when the artifact
    is exactly what the manifest lists). Hidden files count: an unlisted one is reported like any other."""
    problems = []
    listed = {str(f["path"]) for f in manifest.files}
    for f in manifest.files:
        p = inside(root, str(f["path"]), "manifest")
        if p.is_symlink() or not p.is_file():
            problems.append(f"missing {f['path']}")
        elif p.stat().st_size != int(f["size"]):
            problems.append(f"size of {f['path']} differs")
        elif sha256_file(p) != f["sha256"]:
            problems.append(f"sha256 of {f['path']} differs")
    for rel in list_files(root):
        if rel.as_posix() not in listed:
            problems.append(f"unlisted {rel.as_posix()}")
    if files_digest(manifest.files) != manifest.digest:
        problems.append("digest does not match the file list")
    return problems


def computed_digest(root: Path) -> str:
    """The digest of a folder's files as they are (hidden ones included), whatever its manifest says."""
    files = [
        {"path": rel.as_posix(), "sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size}
        for rel in list_files(root)
    ]
    return files_digest(files)


def digest_of(root: Path) -> str:
    """Digest of an input: its manifest's when every file matches it by sha256, else one computed from the
    files (which then differs from any digest recorded for the artifact)."""
    if root.is_file():
        return "sha256:" + sha256_file(root)
    m = read_manifest(root)
    if m is not None and not verify(root, m):
        return m.digest
    return computed_digest(root)
