"""Runs a model server (vLLM, llama-server) as a local subprocess on 127.0.0.1, waits for /health, stops it by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tuneops import proctree

HOST = "127.0.0.1"


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A started server: its PID (also its process group), port and log file."""

    argv: tuple[str, ...]
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    health_path: str = "/health"
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log_tail(self, limit: int = 4000) -> str:
        return proctree.tail(self.log_path, limit=limit)

    def running(self) -> bool:
        return self.process.poll() is None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + self.health_path, timeout=timeout_s) as response:
                return 200 <= int(response.status) < 300
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def wait_healthy(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Block until the health endpoint answers 2xx; return the seconds waited.

        llama-server answers 503 while it loads the model and vLLM refuses connections until it is up, so
        both simply read as "not yet".
        """
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            if not self.running():
                raise ServerStartError(
                    f"server exited with code {self.process.returncode} before becoming healthy; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if self.healthy():
                return time.monotonic() - start
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"server not healthy at {self.base_url}{self.health_path} after {timeout_s:.0f}s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(poll_s)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM the server's process group (its PID), then SIGKILL after ``grace_s``; return the exit code."""
        if self.running():
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=30)
        # children (vLLM's engine core runs as one) share the group; make sure none outlive it
        self._signal(signal.SIGKILL)
        self._wait_group_gone(timeout_s=5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode

    def _wait_group_gone(self, timeout_s: float) -> None:
        # SIGKILL is delivered asynchronously; a port or GPU held by a dying child is not free until it is gone
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proctree.group_members(self.process.pid):
            time.sleep(0.05)

    def _signal(self, sig: signal.Signals) -> None:
        # the server was started as the leader of its own session, so its PID is also its process-group id
        proctree.signal_group(self.process.pid, sig)


def start_server(
    argv: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    inherit_env: bool = True,
    cwd: Path | None = None,
    health_path: str = "/health",
) -> ServerProcess:
    """Start ``argv`` in its own process group with output to ``log_path``; does not wait for health.

    ``env`` is laid over the current environment (or replaces it when ``inherit_env`` is false).
    """
    if not argv:
        raise ValueError("empty command line")
    full_env = dict(os.environ) if inherit_env else {}
    if env:
        full_env.update(env)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    except OSError:
        log.close()
        raise
    return ServerProcess(
        argv=tuple(argv), port=port, log_path=log_path, process=process, health_path=health_path, _log=log
    )


@contextlib.contextmanager
def running_server(
    argv: Sequence[str],
    *,
    port: int,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    health_timeout_s: float = 300.0,
    health_path: str = "/health",
    cwd: Path | None = None,
) -> Iterator[ServerProcess]:
    """Start a server, wait until healthy, yield it, and stop it by PID on exit (also when startup fails)."""
    server = start_server(argv, port=port, log_path=log_path, env=env, cwd=cwd, health_path=health_path)
    try:
        server.wait_healthy(health_timeout_s)
        yield server
    finally:
        server.stop()
