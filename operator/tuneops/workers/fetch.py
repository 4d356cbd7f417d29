"""`tuneops worker fetch`: puts a model from s3://, hf:// or a local path into a serving Pod's model folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from tuneops import storage
from tuneops.storage import parse_uri, remote
from tuneops.storage.artifacts import check_input
from tuneops.storage.manifest import FETCH_MARKER, digest_of, list_files
from tuneops.workers.result import ArtifactResult, WorkerResult

log = logging.getLogger("tuneops.workers.fetch")
# Bookkeeping, not content: manifests and digests leave it out (storage.manifest.BOOKKEEPING).
MARKER = FETCH_MARKER


def _size(root: Path) -> int:
    return (
        root.stat().st_size
        if root.is_file()
        else sum((root / rel).stat().st_size for rel in list_files(root))
    )


def _format(root: Path) -> str:
    names = [root.name] if root.is_file() else [p.name for p in root.rglob("*")]
    if any(n.endswith(".gguf") for n in names):
        return "gguf"
    return "safetensors"


def _marker(target: Path) -> dict[str, object]:
    marker = target / MARKER
    if not marker.is_file() or marker.is_symlink():
        return {}
    try:
        data = json.loads(marker.read_text())
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _current_digest(target: Path) -> str | None:
    """The folder's digest as its files are now (None when it cannot be read as an artifact: a link...)."""
    try:
        return digest_of(target)
    except (OSError, storage.InputError):
        return None


def run_fetch(source: str, dest: str, expect: str | None = None) -> WorkerResult:
    """Fill `dest` with the model's files. `dest` may be a mount point (an emptyDir), so it is never renamed:
    files land in a hidden staging folder inside it and are moved up once the download is complete and
    checked (no links, files as the manifest lists them, the `expect`ed digest). A folder a finished fetch of
    the same source filled (its marker is written last) is reused when its files, hashed again, still have the
    digest the marker recorded; otherwise it is fetched again."""
    u = parse_uri(source)
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    done = _marker(target)
    if done.get("source") == source and (not expect or done.get("expect") == expect):
        digest = _current_digest(target)
        if digest is not None and digest == done.get("digest"):
            log.info("fetch: %s already holds %s (digest re-checked); reusing", target, source)
            return WorkerResult(
                artifact=ArtifactResult(
                    uri=source,
                    digest=digest,
                    size_bytes=_size(target),
                    format=_format(target),
                    reused=True,
                )
            )
        log.warning(
            "fetch: %s no longer holds what the fetch of %s left (digest %s, recorded %s): fetching again",
            target,
            source,
            digest,
            done.get("digest"),
        )
    # A previous attempt of this init container may have left files: start from an empty folder.
    for entry in target.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    staging = target / f".tuneops-staging-{uuid.uuid4().hex[:8]}"
    if u.is_local:
        # Checked where it is (links, manifest, digest), then copied without following any link.
        src = storage.fetch(u, expect)
        if src.is_file():
            staging.mkdir()
            shutil.copy2(src, staging / src.name, follow_symlinks=False)
        else:
            shutil.copytree(src, staging, symlinks=True)
    else:
        got = remote.s3_download(u, staging) if u.scheme == "s3" else remote.hf_download(u, staging)
        check_input(u, got, expect)
    for entry in sorted(staging.iterdir()):
        os.replace(entry, target / entry.name)
    staging.rmdir()
    digest = digest_of(target)
    # Written last: its presence means the folder is complete (a restarted init container reuses it).
    (target / MARKER).write_text(json.dumps({"source": source, "digest": digest, "expect": expect or ""}))
    log.info("fetch: %s -> %s complete", source, target)
    return WorkerResult(
        artifact=ArtifactResult(uri=source, digest=digest, size_bytes=_size(target), format=_format(target))
    )
