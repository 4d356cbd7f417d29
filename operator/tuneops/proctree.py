"""Local processes by PID (Linux /proc): trees and groups, signals, whether a PID is still ours, log tails."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

TAIL_WINDOW = 64 * 1024


def _stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: state, ppid, pgrp, ..."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2 :].split()


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for child in _pids():
        fields = _stat(child)
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(child)
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group; zombies wait for a reaper, not for us."""
    if not Path("/proc").is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members: list[int] = []
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None and len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(pid)
    return members


def signal_group(pgid: int, sig: int) -> None:
    """Signal a process group (a process started in its own session: its PID is the group id)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def signal_tree(pid: int, sig: int, known: set[int]) -> None:
    """Signal a process group (leader `pid`) and every descendant seen now or before (`known` grows)."""
    signal_group(pid, sig)
    with contextlib.suppress(OSError):
        known.update(descendants(pid))
    for child in sorted(known):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, sig)


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie whose threads have all exited does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is gone once no thread of it runs. A Go server's main thread
    # turns zombie while its other threads are still exiting, so the thread count decides.
    try:
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
        )
    except OSError:
        return True
    zombie = status.get("State", "").strip().startswith("Z")
    return not (zombie and int(status.get("Threads", "1").strip() or 1) <= 1)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")


def runs(pid: int, binary: str) -> bool:
    """Whether `pid` is still the `binary` we started (guards against PID reuse after a reboot or crash)."""
    if not alive(pid):
        return False
    argv = _cmdline(pid)
    return argv is not None and Path(argv[0]).name == Path(binary).name


def matches(pid: int, marker: str) -> bool:
    """Whether `pid` is alive, not a zombie, and its command line names `marker` (it is still ours)."""
    argv = _cmdline(pid)
    fields = _stat(pid)
    return argv is not None and fields is not None and fields[0] != "Z" and marker in " ".join(argv)


def stop(pid: int, grace: float, running: Callable[[], bool]) -> None:
    """SIGTERM `pid`, then SIGKILL when `running()` still holds after `grace` seconds."""
    if not running():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and running():
        time.sleep(0.05)
    if running():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the starting process dies (tests; Linux only)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def oom_kills() -> int | None:
    """The kernel's count of OOM kills (Linux >= 4.13), to tell an OOM kill from another SIGKILL."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tail(path: Path, lines: int | None = None, limit: int | None = None, missing: str = "") -> str:
    """The end of a log: its last `lines` lines, then at most `limit` characters; `missing` when unreadable."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max(TAIL_WINDOW, 4 * (limit or 0))))
            data = f.read()
    except OSError:
        return missing
    if lines is not None:
        data = b"\n".join(data.splitlines()[-lines:])
    text = data.decode("utf-8", errors="replace")
    return text[-limit:] if limit else text
