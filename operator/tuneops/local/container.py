"""One container of a Pod on the local node: the process that plays it, its state as the API shows it, its probes."""

from __future__ import annotations

import datetime as dt
import math
import signal
import subprocess
from dataclasses import dataclass, field
from typing import Any

from tuneops.local.runtimes import Runtime

Obj = dict[str, Any]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def exit_code(returncode: int) -> int:
    """A Popen return code as a container's exit code: death by signal N reads 128 + N, as in a shell."""
    return 128 - returncode if returncode < 0 else returncode


def go_duration(seconds: float) -> str:
    """A duration as Go prints it (`10s`, `1m20s`, `5m0s`, `500ms`): the kubelet's messages quote them so."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000):d}ms"
    minutes, secs = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(minutes), 60)
    text = f"{secs:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    return f"{minutes}m{text}" if minutes else text


@dataclass
class ProbeState:
    kind: str  # startup | readiness | liveness
    spec: Obj
    period: float
    failure_threshold: int
    success_threshold: int
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0

    @classmethod
    def make(cls, kind: str, spec: Obj, cap: float | None) -> ProbeState:
        period = float(spec.get("periodSeconds") or 10)
        failures = int(spec.get("failureThreshold") or 3)
        if cap is not None and period > cap:
            # Same failure budget in seconds, probed more often.
            failures = math.ceil(failures * period / cap)
            period = cap
        return cls(kind, spec, period, failures, int(spec.get("successThreshold") or 1))


@dataclass
class Container:
    """One container of a Pod and the process that currently plays it."""

    spec: Obj
    init: bool
    restart_count: int = 0
    proc: subprocess.Popen[bytes] | None = None
    runtime: Runtime | None = None
    started_at: str | None = None
    started_mono: float = 0.0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    started: bool = False
    next_start: float = 0.0
    killed_by_us: bool = False
    oom_baseline: int | None = None
    engine_name: str | None = None
    """Container mode: the engine's name for the container that plays this one now."""
    engine_id: str | None = None
    image_id: str | None = None
    oom_killed: bool = False
    start_error: str = ""
    """Container mode: the runtime could not start the process; its message (reason StartError)."""
    probes: dict[str, ProbeState] = field(default_factory=dict)
    done: bool = False  # terminated for good (no restart will follow)
    known_children: set[int] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)
    kill_reason: str = ""
    backoff_streak: int = 0
    pull_failures: int = 0
    pull_retry_at: float = 0.0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def sidecar(self) -> bool:
        """A native sidecar: an init container with restartPolicy Always. It runs beside the Pod's containers,
        is restarted whatever its exit code, and counts as initialized once started."""
        return self.init and self.spec.get("restartPolicy") == "Always"

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": self._image_id(),
            "ready": self.ready,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.proc is not None:
            out["containerID"] = self._container_id()
        if not self.init:
            out["started"] = self.started
        if self.last_state:
            out["lastState"] = self.last_state
        return out

    def _container_id(self) -> str:
        """`<runtime>://<id>`, as a kubelet reports it: the engine's container ID, or the local process."""
        if self.engine_id:
            return f"podman://{self.engine_id}"
        return f"local://{self.proc.pid}" if self.proc is not None else ""

    def _image_id(self) -> str:
        if self.image_id:
            return f"{self.spec.get('image', '')}@{self.image_id}"
        return f"local://{self.runtime.name}" if self.runtime else ""

    def arm_probes(self, now: float, cap: float | None) -> None:
        """A fresh process: probes start over after their initial delay; unready until they pass."""
        self.ready = False
        self.started = False
        self.probes = {
            kind: ProbeState.make(kind, self.spec[f"{kind}Probe"], cap)
            for kind in ("startup", "readiness", "liveness")
            if not self.init and self.spec.get(f"{kind}Probe")
        }
        for p in self.probes.values():
            p.next_at = now + float(p.spec.get("initialDelaySeconds") or 0)
        if "startup" not in self.probes:
            self.started = True

    def terminated(self, code: int, oom_now: int | None, message: str) -> Obj:
        """The `terminated` state for a process that exited with Popen return code `code`."""
        assert self.proc is not None
        reason = "Completed" if code == 0 else "Error"
        if self.start_error:
            reason = "StartError"
            message = self.start_error
            self.start_error = ""
        elif self.oom_killed and not self.killed_by_us:
            reason = "OOMKilled"
        elif code < 0:
            oom = self.oom_baseline is not None and oom_now is not None and oom_now > self.oom_baseline
            if -code == signal.SIGKILL and not self.killed_by_us and oom:
                reason = "OOMKilled"
        term: Obj = {
            "exitCode": exit_code(code),
            "reason": reason,
            "startedAt": self.started_at,
            "finishedAt": now_rfc3339(),
            "containerID": self._container_id(),
        }
        if code < 0:
            term["signal"] = -code
        if message:
            term["message"] = message
        return term
