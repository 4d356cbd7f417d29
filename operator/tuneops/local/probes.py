"""Startup, readiness and liveness probes of the local node: running one, and what a round of them decides."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneops.local.container import Container, ProbeState

Obj = dict[str, Any]

Exec = Callable[[list[str], float], tuple[int, str]]
"""Runs a command in the container with a timeout: (exit code, output)."""
Check = Callable[[Obj], tuple[bool, str]]
"""Runs one probe: (passed, why not)."""


@dataclass(frozen=True)
class Finding:
    """What a round of probes asks the Pod worker to do: record `unready`, or `restart` the container."""

    action: str  # unready | restart
    message: str


def port_number(container: Obj, port: Any) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def _http_get(h: Obj, host: str, port: int, timeout: float) -> tuple[bool, str]:
    conn: http.client.HTTPConnection
    if str(h.get("scheme") or "HTTP").upper() == "HTTPS":
        conn = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        headers = {str(x["name"]): str(x["value"]) for x in h.get("httpHeaders") or []}
        conn.request("GET", str(h.get("path") or "/"), headers=headers)
        status = conn.getresponse().status
    finally:
        conn.close()
    return 200 <= status < 400, f"HTTP probe failed with statuscode: {status}"


def run_probe(spec: Obj, container: Obj, ip: str, exec_: Exec) -> tuple[bool, str]:
    """One probe against a container at `ip`: (passed, why not)."""
    timeout = float(spec.get("timeoutSeconds") or 1)
    try:
        if "httpGet" in spec:
            h = spec["httpGet"]
            return _http_get(h, str(h.get("host") or ip), port_number(container, h.get("port")), timeout)
        if "tcpSocket" in spec:
            t = spec["tcpSocket"]
            with socket.create_connection(
                (str(t.get("host") or ip), port_number(container, t.get("port"))), timeout
            ):
                return True, ""
        if "exec" in spec:
            code, out = exec_([str(x) for x in spec["exec"].get("command") or []], timeout)
            return code == 0, out.strip()[-500:]
    except (OSError, ValueError, http.client.HTTPException) as err:
        return False, str(err) or type(err).__name__
    return False, "probe has no handler"


def _due(probe: ProbeState, now: float, check: Check) -> tuple[bool, str] | None:
    """Run `probe` when its period has come round (None when it has not)."""
    if now < probe.next_at:
        return None
    result = check(probe.spec)
    probe.next_at = now + probe.period
    return result


def _count(probe: ProbeState, ok: bool) -> bool:
    """Update the probe's streaks; True when its failures have reached the threshold."""
    if ok:
        probe.failures = 0
        probe.successes += 1
        return False
    probe.successes = 0
    probe.failures += 1
    return probe.failures >= probe.failure_threshold


def _startup(c: Container, now: float, check: Check) -> list[Finding]:
    startup = c.probes["startup"]
    result = _due(startup, now, check)
    if result is None:
        return []
    if _count(startup, result[0]):
        return [Finding("restart", f"Startup probe failed: {result[1]}")]
    if result[0]:
        c.started = True
        # Readiness is checked right away rather than a full period later.
        if "readiness" in c.probes:
            c.probes["readiness"].next_at = 0.0
    return []


def _readiness(c: Container, now: float, check: Check) -> list[Finding]:
    readiness = c.probes.get("readiness")
    if readiness is None:
        c.ready = True
        return []
    result = _due(readiness, now, check)
    if result is None:
        return []
    if _count(readiness, result[0]) and c.ready:
        c.ready = False
        return [Finding("unready", f"Readiness probe failed: {result[1]}")]
    if result[0] and readiness.successes >= readiness.success_threshold:
        c.ready = True
    return []


def _liveness(c: Container, now: float, check: Check) -> list[Finding]:
    liveness = c.probes.get("liveness")
    result = None if liveness is None else _due(liveness, now, check)
    if liveness is not None and result is not None and _count(liveness, result[0]):
        return [Finding("restart", f"Liveness probe failed: {result[1]}")]
    return []


def advance(c: Container, now: float, check: Check) -> list[Finding]:
    """Run the probes that are due on a running container; update its started/ready flags.

    Until the startup probe passes, only it runs; then readiness (ready when absent) and liveness.
    """
    if not c.started and "startup" in c.probes:
        return _startup(c, now, check)
    return _readiness(c, now, check) + _liveness(c, now, check)
