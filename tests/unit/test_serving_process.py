"""The local server helper: health wait, early-exit and timeout reports, SIGTERM then SIGKILL by PID."""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tuneops.serving.process import ServerStartError, free_port, running_server, start_server

# a /health server that becomes healthy after a delay; optionally ignores SIGTERM and forks a child
SERVER = textwrap.dedent(
    """
    import http.server, os, signal, sys, time
    port, delay, stubborn = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "1"
    if stubborn:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    start = time.monotonic()
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path == "/health" and time.monotonic() - start >= delay
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(str(child).encode())
        def log_message(self, *a):
            pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


def argv(tmp_path: Path, port: int, delay: float = 0.5, stubborn: bool = False) -> list[str]:
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    return [sys.executable, str(script), str(port), str(delay), "1" if stubborn else "0"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); it no longer runs
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_waits_for_health_and_stops_the_whole_group(tmp_path: Path) -> None:
    port = free_port()
    with running_server(
        argv(tmp_path, port), port=port, log_path=tmp_path / "log", health_timeout_s=30
    ) as server:
        assert server.healthy()
        import urllib.request

        with urllib.request.urlopen(server.base_url + "/health") as response:
            child = int(response.read())
        assert alive(server.pid) and alive(child)
    assert not server.running()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child), "a child that ignores SIGTERM must not outlive the server"


def test_sigterm_ignored_escalates_to_sigkill(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(argv(tmp_path, port, stubborn=True), port=port, log_path=tmp_path / "log")
    try:
        server.wait_healthy(30)
    finally:
        code = server.stop(grace_s=1.0)
    assert code == -9


def test_early_exit_reports_the_log(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-c", "import sys; print('model file is corrupt'); sys.exit(3)"]
    server = start_server(cmd, port=port, log_path=tmp_path / "log")
    try:
        with pytest.raises(ServerStartError, match="model file is corrupt"):
            server.wait_healthy(30)
    finally:
        server.stop()
    assert server.process.returncode == 3


def test_health_timeout(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(argv(tmp_path, port, delay=60), port=port, log_path=tmp_path / "log")
    try:
        with pytest.raises(ServerStartError, match="not healthy"):
            server.wait_healthy(2)
    finally:
        server.stop()
    assert not server.running()
