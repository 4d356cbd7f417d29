"""Reading inputs and writing outputs by URI: local staging, atomic swap into place, manifest, reuse."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import functools
import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneops.storage import integrity, remote
from tuneops.storage.manifest import MANIFEST_NAME, Manifest, build_manifest, read_manifest, verify
from tuneops.storage.safety import UnsafeInputError, check_tree
from tuneops.storage.uri import ArtifactURI, InputError, InvalidURIError, parse_uri, pvc_root

log = logging.getLogger("tuneops.storage")
STAGING_MARK = ".tuneops-staging-"
# Set in every worker Pod to the Job's name.
JOB_NAME_ENV = "TUNEOPS_JOB_NAME"
_RENAME_EXCHANGE = 2


def workdir() -> Path:
    """Scratch space for downloads and remote staging: $TUNEOPS_WORKDIR, else $TMPDIR/tuneops."""
    env = os.environ.get("TUNEOPS_WORKDIR")
    base = Path(env) if env else Path(os.environ.get("TMPDIR", "/tmp")) / "tuneops"
    base.mkdir(parents=True, exist_ok=True)
    return base


def fetch(uri: str | ArtifactURI, expect: str | None = None) -> Path:
    """A local path holding the input: the path itself for file/pvc, a download for s3/hf.

    Before it is returned the input is checked: no link or special file anywhere in it (nothing outside the
    artifact is read), its files match its manifest when it has one, and its digest is `expect` (default: what
    $TUNEOPS_EXPECT_DIGESTS records for this URI) when one is expected.
    """
    u = parse_uri(uri) if isinstance(uri, str) else uri
    if expect is None:
        expect = integrity.expected_digests().get(u.raw)
    if u.is_local:
        p = u.local_path()
        if not os.path.lexists(p):
            raise InputError(f"{u.raw}: {p} does not exist")
        _inside_claim(u, p)
    else:
        dest = workdir() / "inputs" / hashlib.sha256(u.raw.encode()).hexdigest()[:16]
        if u.scheme == "s3":
            p = remote.s3_download(u, dest)
        elif u.scheme == "hf":
            p = remote.hf_download(u, dest)
        else:
            raise InvalidURIError(f"{u.raw}: unsupported scheme")
    check_input(u, p, expect)
    return p


def check_input(u: ArtifactURI, p: Path, expect: str | None) -> None:
    """What `fetch` checks of the files it got for `u` (links, manifest, digest); raises with the reason."""
    check_tree(p, u.raw)
    if p.is_dir():
        integrity.verify_dir(u.raw, p, expect)
    else:
        integrity.verify_file(u.raw, p, expect, _parent_manifest(u, p))


def _inside_claim(u: ArtifactURI, p: Path) -> None:
    """A pvc:// path stays inside its claim once links in its folders are resolved."""
    if u.scheme != "pvc":
        return
    claim = os.path.realpath(pvc_root() / u.claim)
    if os.path.commonpath([claim, os.path.realpath(p)]) != claim:
        raise UnsafeInputError(f"{u.raw}: {p} leads outside the claim {u.claim}; refused")


def _parent_manifest(u: ArtifactURI, p: Path) -> Callable[[], Manifest | None]:
    """The manifest of the artifact a single file belongs to (its folder's), read where the file was."""
    if u.is_local or u.scheme != "s3" or "/" not in u.key:
        return integrity.local_parent_manifest(p)
    parent = parse_uri(u.raw.rsplit("/", 1)[0])
    return lambda: remote.s3_read_manifest(parent)


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
    if not final.exists():
        try:
            os.rename(staging, final)
            staging = final
        except OSError as err:
            # Another writer published in between: replace its artifact as below (the last one wins).
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if staging != final:
        if not _exchange(staging, final):
            old = final.with_name(f"{final.name}{STAGING_MARK}old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(staging, final)
            staging = old
        shutil.rmtree(staging, ignore_errors=True)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_name() -> str:
    """Who writes: the Job's name (TUNEOPS_JOB_NAME, set in every worker Pod), else this process's id.

    It goes into the staging folder's name, so two Jobs writing one output (a superseded one still running
    next to its replacement) never share a folder, and a retried Pod of the same Job finds its predecessor's.
    """
    job = os.environ.get(JOB_NAME_ENV, "")
    clean = "".join(ch for ch in job if ch.isalnum() or ch in "-.")[:63]
    return clean or f"pid{os.getpid()}"


def staging_path(final: Path, writer: str) -> Path:
    return final.with_name(f".{final.name}{STAGING_MARK}{writer}-{uuid.uuid4().hex[:8]}")


def _lock(path: Path, wait: bool = False) -> int | None:
    """An exclusive lock on the folder, held as long as the returned descriptor is open (the kernel drops it
    when the writer dies). None where nobody else holds it could not be told (a filesystem without flock)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
        return None
    return fd


def clean_stale_staging(final: Path, writer: str | None = None) -> None:
    """Removes staging siblings left by killed runs. A live writer holds a lock on its folder, so a superseded
    Job still writing keeps its folder; where locks cannot be taken, only `writer`'s own earlier folders (a
    previous Pod of the same Job) are removed."""
    if not final.parent.is_dir():
        return
    for p in final.parent.glob(f".{final.name}{STAGING_MARK}*"):
        try:
            fd = _lock(p)
        except BlockingIOError:
            continue  # another writer is at work in it
        except OSError:
            continue  # gone already, or not a folder
        try:
            own = writer is not None and p.name.startswith(f".{final.name}{STAGING_MARK}{writer}-")
            if fd is not None or own:
                log.info("removing %s left by an interrupted run", p)
                shutil.rmtree(p, ignore_errors=True)
        finally:
            if fd is not None:
                os.close(fd)
    for p in final.parent.glob(f"{final.name}{STAGING_MARK}old-*"):
        shutil.rmtree(p, ignore_errors=True)


@dataclass
class Output:
    """One output artifact. Work happens in `staging`; `commit` writes the manifest and publishes."""

    uri: ArtifactURI
    staging: Path | None = None
    _lock_fd: int | None = None

    @classmethod
    def of(cls, raw: str) -> Output:
        return cls(parse_uri(raw))

    def _final_local(self) -> Path:
        return self.uri.local_path()

    def _candidate(self) -> tuple[Manifest, Callable[[], list[str]]] | None:
        """The manifest of what is at the URI, and how to check the files against it (not yet called)."""
        if self.uri.is_local:
            final = self._final_local()
            local = read_manifest(final) if final.is_dir() else None
            return None if local is None else (local, functools.partial(verify, final, local))
        if self.uri.scheme == "s3":
            found = remote.s3_candidate(self.uri)
            if found is None:
                return None
            folder, m = found
            return m, lambda: remote.s3_verify(folder, m)
        hub = remote.hf_read_manifest(self.uri)
        return None if hub is None else (hub, lambda: remote.hf_verify(self.uri, hub))

    def _checked(self, m: Manifest, check: Callable[[], list[str]]) -> Manifest | None:
        problems = check()
        if problems:
            log.warning(
                "%s: the artifact there does not match its manifest (%s): not used; it is made again",
                self.uri.raw,
                "; ".join(problems[:5]),
            )
            return None
        return m

    def existing(self) -> Manifest | None:
        """The manifest of a complete artifact already at the URI, if any: every file is there with the sha256
        its manifest lists, and nothing else is (see remote for what stands in for a hash on S3 and the Hub)."""
        found = self._candidate()
        return None if found is None else self._checked(*found)

    def location(self, manifest: Manifest) -> str:
        """The URI consumers read this artifact from: the output itself (file, pvc, hf: replaced atomically),
        or for s3 the artifact's own folder under the output prefix (see remote.s3_upload)."""
        if self.uri.scheme == "s3":
            return self.uri.child(remote.content_dir(manifest.digest)).raw
        return self.uri.raw

    def reusable(self, key: str) -> Manifest | None:
        """A complete artifact made from the same inputs, parameters and tools, its files checked by sha256
        (the key first: an artifact of other inputs is not read at all)."""
        found = self._candidate()
        if found is None or found[0].key != key:
            return None
        return self._checked(*found)

    def begin(self) -> Path:
        if self.uri.is_local:
            final = self._final_local()
            writer = writer_name()
            final.parent.mkdir(parents=True, exist_ok=True)
            # Writers starting side by side take turns here, so none sees another's folder between its
            # creation and its lock.
            turn = _lock(final.parent, wait=True)
            try:
                clean_stale_staging(final, writer)
                self.staging = staging_path(final, writer)
                self.staging.mkdir()
                self._lock_fd = _lock(self.staging)
            finally:
                if turn is not None:
                    os.close(turn)
        else:
            self.staging = workdir() / "outputs" / uuid.uuid4().hex
            self.staging.mkdir(parents=True)
        return self.staging

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

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
        self._unlock()
        return m

    def abort(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        self._unlock()
