"""Loopback address ranges for local nodes: each 127.X.0.0/16 is held by one node at a time through an flock."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

# Loopback addresses are shared by every user of the machine, so the locks live in one fixed folder rather than
# under a per-user cache or $TMPDIR.
DEFAULT_LOCK_DIR = Path("/tmp/tuneops-loopback")
LOCK_DIR_ENV = "TUNEOPS_LOOPBACK_LOCKS"
# 127.0.x.y holds the control plane and the Service proxy (127.0.0.1); start where the node always did.
FIRST = 42
SECOND_OCTETS = [*range(FIRST, 255), *range(1, FIRST)]


class PrefixTaken(RuntimeError):
    """Another local node on this machine holds the address range asked for."""


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or DEFAULT_LOCK_DIR)


@dataclass
class Claim:
    """A held `127.X` prefix; the lock goes with `release()` or with the process, so no lock can go stale."""

    prefix: str
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _try_lock(folder: Path, prefix: str) -> Claim | None:
    # Read-only is enough for flock, so a lock file another user created still works.
    fd = os.open(folder / f"{prefix}.lock", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Claim(prefix, fd)


def claim(preferred: str | None = None, exact: str | None = None, folder: Path | None = None) -> Claim:
    """Hold a free `127.X` prefix: `exact` or fail, else `preferred` when free, else the first free one."""
    folder = folder or lock_dir()
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(0o1777)  # other users' nodes create their lock files here too
    if exact is not None:
        held = _try_lock(folder, exact)
        if held is None:
            raise PrefixTaken(f"another local node on this machine uses the addresses {exact}.x.y")
        return held
    candidates = [f"127.{n}" for n in SECOND_OCTETS]
    if preferred in candidates:
        candidates.remove(preferred)
        candidates.insert(0, preferred)
    for prefix in candidates:
        held = _try_lock(folder, prefix)
        if held is not None:
            return held
    raise PrefixTaken(f"every 127.X address range is held by another local node (locks in {folder})")
