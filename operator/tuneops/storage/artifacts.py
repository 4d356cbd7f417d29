"""Reading inputs and writing outputs by URI: local staging, atomic swap into place, manifest, reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneops.storage import remote
from tuneops.storage.manifest import MANIFEST_NAME, Manifest, build_manifest, read_manifest, verify
from tuneops.storage.uri import ArtifactURI, InputError, InvalidURIError, parse_uri

log = logging.getLogger("tuneops.storage")
STAGING_MARK = ".tuneops-staging-"
_RENAME_EXCHANGE = 2


def workdir() -> Path:
    """Scratch space for downloads and remote staging: $TUNEOPS_WORKDIR, else $TMPDIR/tuneops."""
    env = os.environ.get("TUNEOPS_WORKDIR")
    base = Path(env) if env else Path(os.environ.get("TMPDIR", "/tmp")) / "tuneops"
    base.mkdir(parents=True, exist_ok=True)
    return base


def fetch(uri: str | ArtifactURI) -> Path:
    """A local path holding the input: the path itself for file/pvc, a download for s3/hf."""
    u = parse_uri(uri) if isinstance(uri, str) else uri
    if u.is_local:
        p = u.local_path()
        if not p.exists():
            raise InputError(f"{u.raw}: {p} does not exist")
        return p
    dest = workdir() / "inputs" / hashlib.sha256(u.raw.encode()).hexdigest()[:16]
    if u.scheme == "s3":
        return remote.s3_download(u, dest)
    if u.scheme == "hf":
        return remote.hf_download(u, dest)
    raise InvalidURIError(f"{u.raw}: unsupported scheme")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where the kernel/libc lacks it."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _fsync_tree(root: Path) -> None:
    for dirpath, _, names in os.walk(root):
        for n in names:
            fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_dir(staging: Path, final: Path) -> None:
    """Moves a complete staging dir to final. An existing final is swapped out atomically, then removed:
    at every instant final is either the whole old artifact or the whole new one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        if not _exchange(staging, final):
            old = final.with_name(f"{final.name}{STAGING_MARK}old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(staging, final)
            staging = old
        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.rename(staging, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_stale_staging(final: Path) -> None:
    """Removes staging siblings left by killed runs (one writer per output URI is the contract)."""
    if not final.parent.is_dir():
        return
    for p in final.parent.glob(f".{final.name}{STAGING_MARK}*"):
        log.info("removing %s left by an interrupted run", p)
        shutil.rmtree(p, ignore_errors=True)
    for p in final.parent.glob(f"{final.name}{STAGING_MARK}old-*"):
        shutil.rmtree(p, ignore_errors=True)


@dataclass
class Output:
    """One output artifact. Work happens in `staging`; `commit` writes the manifest and publishes."""

    uri: ArtifactURI
    staging: Path | None = None

    @classmethod
    def of(cls, raw: str) -> Output:
        return cls(parse_uri(raw))

    def _final_local(self) -> Path:
        return self.uri.local_path()

    def existing(self) -> Manifest | None:
        """The manifest of a complete artifact already at the URI, if any."""
        if self.uri.is_local:
            final = self._final_local()
            m = read_manifest(final) if final.is_dir() else None
            if m is None or verify(final, m, hashes=False):
                return None
            return m
        if self.uri.scheme == "s3":
            m = remote.s3_read_manifest(self.uri)
            return m if m is not None and remote.s3_complete(self.uri, m) else None
        return remote.hf_read_manifest(self.uri)

    def reusable(self, key: str) -> Manifest | None:
        """A complete artifact made from the same inputs, parameters and tools (its files are re-hashed)."""
        m = self.existing()
        if m is None or m.key != key:
            return None
        if self.uri.is_local and verify(self._final_local(), m, hashes=True):
            return None
        return m

    def begin(self) -> Path:
        if self.uri.is_local:
            final = self._final_local()
            clean_stale_staging(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            self.staging = final.with_name(f".{final.name}{STAGING_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        else:
            self.staging = workdir() / "outputs" / uuid.uuid4().hex
        self.staging.mkdir(parents=True)
        return self.staging

    def commit(self, **manifest_fields: Any) -> Manifest:
        """Hashes the staged files, writes the manifest, then publishes (rename, or upload with manifest last)."""
        if self.staging is None:
            raise RuntimeError("commit() before begin()")
        m = build_manifest(self.staging, **manifest_fields)
        (self.staging / MANIFEST_NAME).write_text(m.dumps())
        if self.uri.is_local:
            _fsync_tree(self.staging)
            publish_dir(self.staging, self._final_local())
        elif self.uri.scheme == "s3":
            remote.s3_upload(self.staging, self.uri, m)
            shutil.rmtree(self.staging, ignore_errors=True)
        else:
            remote.hf_upload(self.staging, self.uri)
            shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        return m

    def abort(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
