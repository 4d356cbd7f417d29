"""Checking an input before use: its files against its manifest, and the manifest's digest against the one
the operator recorded when the artifact was made (passed to the worker in $TUNEOPS_EXPECT_DIGESTS)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from tuneops.storage.manifest import Manifest, digest_of, files_digest, read_manifest, sha256_file, verify
from tuneops.storage.uri import InputError

EXPECT_ENV = "TUNEOPS_EXPECT_DIGESTS"
# `always`: a worker hashes an input folder's files even when its manifest already vouches for them
HASH_INPUTS_ENV = "TUNEOPS_HASH_INPUTS"
DIGEST_MISMATCH = "DigestMismatch"  # the condition reason (api.conditions.Reason.DIGEST_MISMATCH)


class DigestMismatchError(InputError):
    """An input's content is not what was recorded: a file changed after publication, or another artifact."""

    reason = DIGEST_MISMATCH


def expected_digests() -> dict[str, str]:
    """URI -> digest the consumer must find; only content digests (sha256:...) are checked."""
    raw = os.environ.get(EXPECT_ENV, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InputError(f"${EXPECT_ENV} is not a JSON object of URI to digest") from None
    if not isinstance(data, dict):
        raise InputError(f"${EXPECT_ENV} is not a JSON object of URI to digest")
    return {str(k): str(v) for k, v in data.items() if str(v).startswith("sha256:")}


def _short(digest: str) -> str:
    return digest[:23] + "..." if len(digest) > 26 else digest


def check_manifest(uri: str, manifest: Manifest, expect: str | None) -> None:
    """The manifest is self-consistent and, when a digest is expected, is the expected one."""
    if files_digest(manifest.files) != manifest.digest:
        raise DigestMismatchError(f"{uri}: its manifest's digest does not match its own file list")
    if expect and manifest.digest != expect:
        raise DigestMismatchError(
            f"{uri}: digest {_short(manifest.digest)} differs from the recorded {_short(expect)}"
            " (the artifact was replaced or altered after it was made)"
        )


def verify_dir(uri: str, root: Path, expect: str | None) -> None:
    """A folder with a manifest matches it file by file (sha256); without one, its computed digest must be
    the expected one (when there is one)."""
    manifest = read_manifest(root)
    if manifest is None:
        actual = digest_of(root) if expect else None
        if expect and actual != expect:
            raise DigestMismatchError(
                f"{uri}: content digest {_short(str(actual))} differs from the recorded {_short(expect)}"
            )
        return
    check_manifest(uri, manifest, expect)
    problems = verify(root, manifest)
    if problems:
        raise DigestMismatchError(f"{uri}: files do not match the manifest: {'; '.join(problems[:5])}")


def verify_file(
    uri: str, path: Path, expect: str | None, parent_manifest: Callable[[], Manifest | None]
) -> None:
    """One file of an artifact (a GGUF file): its sha256 must be the one its artifact's manifest lists, and
    that manifest the expected one. A file outside any artifact is checked against the expected digest."""
    manifest = parent_manifest()
    entry = None
    if manifest is not None:
        entry = next((f for f in manifest.files if str(f["path"]) == path.name), None)
    if manifest is None or entry is None:
        actual = "sha256:" + sha256_file(path)
        if expect and actual != expect:
            raise DigestMismatchError(
                f"{uri}: content digest {_short(actual)} differs from the recorded {_short(expect)}"
            )
        return
    check_manifest(uri, manifest, expect)
    if sha256_file(path) != entry["sha256"]:
        raise DigestMismatchError(f"{uri}: sha256 of {path.name} differs from its artifact's manifest")


def local_parent_manifest(path: Path) -> Callable[[], Manifest | None]:
    return lambda: read_manifest(path.parent)
