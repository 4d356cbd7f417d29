"""The local node: schedules Pods onto itself and runs their containers as local processes, like a kubelet."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import json
import logging
import math
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops.local.kubeapi import ApiError, Informer, KubeApi, Obj
from tuneops.local.runtimes import Runtime, default_runtimes, find_runtime
from tuneops.local.translate import (
    Mount,
    PathRewriter,
    expand,
    field_value,
    quantity,
    requests_gpu,
    resource_value,
    rewrite_listen_host,
)

log = logging.getLogger(__name__)

NODE_NAME = "tuneops-local"
HOST_IP = "127.0.0.1"
KUBELET_VERSION = "v1.20.2"
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
# A container that ran this long without failing starts its next crash loop from the base back-off.
BACKOFF_RESET_S = 600.0


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class NodeConfig:
    """How the local node behaves; the defaults suit `tuneops local`, tests shorten the timings."""

    root: Path
    name: str = NODE_NAME
    kubeconfig: Path | None = None
    runtimes: list[Runtime] = field(default_factory=default_runtimes)
    ip_prefix: str = "127.42"
    """Pods get <prefix>.x.y addresses (all of 127.0.0.0/8 reaches loopback on Linux)."""
    backoff_base_s: float = 10.0
    backoff_max_s: float = 300.0
    probe_period_cap_s: float | None = None
    """Run probes at least this often; the failure budget (threshold x period) is kept in seconds."""
    sync_s: float = 0.25
    config_refresh_s: float = 2.0
    heartbeat_s: float = 20.0
    run_prestop_hooks: bool = True
    labels: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- processes


def _oom_kills() -> int | None:
    """The kernel's count of OOM kills (Linux >= 4.13), to tell an OOM kill from another SIGKILL."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def signal_tree(pid: int, sig: int, known: set[int]) -> None:
    """Signal a process group (leader `pid`) and every descendant seen now or before (`known` grows)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(OSError):
        known.update(descendants(pid))
    for child in sorted(known):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, sig)


def _tail_text(path: Path, lines: int, limit: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = b"\n".join(data.splitlines()[-lines:]).decode("utf-8", errors="replace")
    return text[-limit:]


# --------------------------------------------------------------------------------------------- containers


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
    probes: dict[str, ProbeState] = field(default_factory=dict)
    done: bool = False  # terminated for good (no restart will follow)
    known_children: set[int] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)
    kill_reason: str = ""
    backoff_streak: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": f"local://{self.runtime.name}" if self.runtime else "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.proc is not None:
            out["containerID"] = f"local://{self.proc.pid}"
        if not self.init:
            out["started"] = self.started
        if self.last_state:
            out["lastState"] = self.last_state
        return out


class ConfigError(Exception):
    """A Secret or ConfigMap a container needs is missing: the container waits (CreateContainerConfigError)."""


class PodWorker:
    """Runs one Pod to completion or deletion on its own thread: volumes, init containers, probes, status."""

    def __init__(self, node: LocalNode, pod: Obj, ip: str) -> None:
        meta = pod["metadata"]
        self.node = node
        self.namespace = str(meta["namespace"])
        self.name = str(meta["name"])
        self.uid = str(meta["uid"])
        self.pod = pod
        self.ip = HOST_IP if (pod.get("spec") or {}).get("hostNetwork") else ip
        self.dir = node.config.root / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        # emptyDirs live under a short path: servers put Unix sockets in them (TMPDIR), and a socket path
        # may not exceed 107 bytes.
        self.scratch_dir = Path(tempfile.gettempdir()) / f"tuneops-{self.uid[:13]}"
        spec = pod.get("spec") or {}
        self.restart_policy = str(spec.get("restartPolicy") or "Always")
        self.init_containers = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.start_time = str((pod.get("status") or {}).get("startTime") or now_rfc3339())
        self.failed_init = False
        self.volume_error: str | None = None
        self.volumes: dict[str, Path] = {}
        self._config_hashes: dict[str, str] = {}
        self._next_refresh = 0.0
        self._last_status: Obj | None = None
        self._events_sent: set[str] = set()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)
        self._adopt(pod)

    # ----- public -------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Stop the processes (node shutdown); the Pod object is left as it is."""
        self.stopping.set()
        self.wake.set()
        self._thread.join(timeout=grace + 15)
        self._kill_all(grace)

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.init_containers + self.containers if c.running() and c.proc]

    def container_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for c in self.containers:
            for p in c.spec.get("ports") or []:
                if p.get("name"):
                    ports[str(p["name"])] = int(p["containerPort"])
        return ports

    # ----- the loop -----------------------------------------------------------------------------------

    def _adopt(self, pod: Obj) -> None:
        """Carry restart counts over from a Pod this node ran before it restarted."""
        status = pod.get("status") or {}
        for key, group in (
            ("initContainerStatuses", self.init_containers),
            ("containerStatuses", self.containers),
        ):
            seen = {s.get("name"): s for s in status.get(key) or []}
            for c in group:
                s = seen.get(c.name)
                if not s:
                    continue
                c.restart_count = int(s.get("restartCount") or 0)
                state = s.get("state") or {}
                if "terminated" in state:
                    c.state = state
                    code = int(state["terminated"].get("exitCode", 1))
                    c.done = (c.init and code == 0) or not self._restarts(code)
                    if not c.done:
                        c.last_state = state
                        c.restart_count += 1
                elif "running" in state:
                    # Its process went away with the node: count it as a crash and apply the restart policy.
                    term = {
                        "exitCode": 137,
                        "reason": "Error",
                        "message": "the local node restarted",
                        "startedAt": state["running"].get("startedAt"),
                        "finishedAt": now_rfc3339(),
                    }
                    c.state = {"terminated": term}
                    c.done = not c.init and not self._restarts(137)
                    if not c.done:
                        c.last_state = {"terminated": term}
                        c.restart_count += 1

    def _run(self) -> None:
        try:
            self._prepare_dirs()
            while not self.stopping.is_set():
                pod = self.node.current_pod(self.namespace, self.name, self.uid)
                if pod is None:
                    # Deleted without us (force delete): stop at once, as the kubelet does for a gone Pod.
                    self._kill_all(2.0)
                    break
                self.pod = pod
                if (pod.get("metadata") or {}).get("deletionTimestamp"):
                    self._terminate(pod)
                    break
                self._step()
                self._report()
                self.wake.wait(self.node.config.sync_s)
                self.wake.clear()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.namespace, self.name)
            self._kill_all(2.0)
        finally:
            self.finished.set()

    def _step(self) -> None:
        if self._phase() in ("Succeeded", "Failed"):
            return  # nothing runs any more; only deletion is left to handle
        mono = time.monotonic()
        if mono >= self._next_refresh:
            self._next_refresh = mono + self.node.config.config_refresh_s
            try:
                self._sync_volumes()
                self.volume_error = None
            except ConfigError as err:
                self.volume_error = str(err)
        if self.volume_error is not None and not any(c.proc for c in self.init_containers + self.containers):
            for c in self.init_containers + self.containers:
                c.state = {"waiting": {"reason": "ContainerCreating", "message": self.volume_error}}
            self._event_once("FailedMount", "Warning", "FailedMount", self.volume_error)
            return
        if self.failed_init:
            return
        # Init containers, one at a time and in order.
        for c in self.init_containers:
            if c.done:
                continue
            self._drive(c)
            if not c.done:
                return
        for c in self.containers:
            self._drive(c)
            if c.running():
                self._probe(c)

    def _drive(self, c: Container) -> None:
        """Start, reap and restart one container according to the restart policy."""
        if c.proc is not None and c.proc.poll() is not None:
            self._reap(c)
        if c.done or c.running() or time.monotonic() < c.next_start:
            return
        self._start(c)

    def _restarts(self, exit_code: int) -> bool:
        if self.restart_policy == "Always":
            return True
        if self.restart_policy == "OnFailure":
            return exit_code != 0
        return False

    # ----- starting -----------------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for sub in ("volumes", "containers", "logs", "home"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def _mounts(self, c: Container) -> list[Mount]:
        mounts = []
        for vm in c.spec.get("volumeMounts") or []:
            host = self.volumes.get(str(vm["name"]))
            if host is None:
                continue
            if vm.get("subPath"):
                host = host / str(vm["subPath"])
                if not host.exists():
                    host.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(str(vm["mountPath"]), str(host)))
        term_path = str(c.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)
        mounts.append(Mount(term_path, str(self._termination_file(c))))
        return mounts

    def _termination_file(self, c: Container) -> Path:
        return self.dir / "containers" / c.name / "termination-log"

    def _log_file(self, c: Container) -> Path:
        return self.dir / "logs" / c.name / f"{c.restart_count}.log"

    def _rewriter(self, c: Container) -> PathRewriter:
        return PathRewriter(self._mounts(c), keep=[str(self.node.config.root)])

    def _env(self, c: Container, runtime: Runtime, rewriter: PathRewriter) -> dict[str, str]:
        spec = c.spec
        container_env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = str(source.get("prefix") or "")
            if "configMapRef" in source:
                ref = source["configMapRef"]
                data = self._config_data("configmaps", str(ref["name"]), bool(ref.get("optional")))
            else:
                ref = source.get("secretRef") or {}
                data = self._config_data("secrets", str(ref.get("name")), bool(ref.get("optional")))
            for k, v in data.items():
                container_env[prefix + k] = v.decode(errors="replace")
        for item in spec.get("env") or []:
            name = str(item["name"])
            if "value" in item or "valueFrom" not in item:
                container_env[name] = expand(str(item.get("value") or ""), container_env)
                continue
            src = item["valueFrom"]
            if "fieldRef" in src:
                container_env[name] = field_value(
                    self.pod, str(src["fieldRef"]["fieldPath"]), self.ip, HOST_IP
                )
            elif "resourceFieldRef" in src:
                ref = src["resourceFieldRef"]
                target = c.spec
                if ref.get("containerName"):
                    target = next(
                        (
                            x.spec
                            for x in self.containers + self.init_containers
                            if x.name == ref["containerName"]
                        ),
                        c.spec,
                    )
                container_env[name] = self._resource_env(target, str(ref["resource"]), ref.get("divisor"))
            elif "secretKeyRef" in src or "configMapKeyRef" in src:
                kind = "secrets" if "secretKeyRef" in src else "configmaps"
                ref = src.get("secretKeyRef") or src.get("configMapKeyRef") or {}
                data = self._config_data(kind, str(ref["name"]), bool(ref.get("optional")))
                key = str(ref["key"])
                if key in data:
                    container_env[name] = data[key].decode(errors="replace")
                elif not ref.get("optional"):
                    raise ConfigError(
                        f"couldn't find key {key} in {kind[:-1]} {self.namespace}/{ref['name']}"
                    )
        env = runtime.base_env()
        env.update(
            {
                "HOME": str(self.dir / "home"),
                "HOSTNAME": self.name,
                "KUBERNETES_SERVICE_HOST": self.node.api_host,
                "KUBERNETES_SERVICE_PORT": str(self.node.api_port),
            }
        )
        for key, value in container_env.items():
            env[key] = self.ip if value in ("0.0.0.0", "::") else rewriter.rewrite(value)
        limit = ((spec.get("resources") or {}).get("limits") or {}).get("cpu")
        if limit is not None and "OMP_NUM_THREADS" not in container_env:
            # No cgroup enforces the CPU limit here; the thread count is what keeps a process within it.
            env["OMP_NUM_THREADS"] = str(max(1, math.ceil(quantity(limit))))
        tmp = next((m.host_path for m in self._mounts(c) if m.container_path.rstrip("/") == "/tmp"), None)
        if tmp and "TMPDIR" not in container_env:
            env["TMPDIR"] = tmp
        return env

    def _resource_env(self, spec: Obj, resource: str, divisor: Any) -> str:
        value = resource_value(spec, resource, str(divisor) if divisor is not None else None)
        if value == "0" and resource.startswith("limits."):
            # An unset limit reads as the node's allocatable, as on a real node.
            name = resource.split(".", 1)[1]
            alloc = self.node.allocatable.get(name)
            if alloc is not None:
                return resource_value({"resources": {"limits": {name: alloc}}}, resource, divisor)
        return value

    def _argv(
        self, c: Container, runtime: Runtime, env: Mapping[str, str], rewriter: PathRewriter
    ) -> list[str]:
        command = [str(x) for x in c.spec.get("command") or []]
        args = [str(x) for x in c.spec.get("args") or []]
        expanded = [rewriter.rewrite(expand(x, env)) for x in command + args]
        command, args = expanded[: len(command)], expanded[len(command) :]
        if not command:
            if not runtime.entrypoint:
                raise ConfigError(f"image {c.spec.get('image')} has no entrypoint in runtime {runtime.name}")
            command = list(runtime.entrypoint)
        program = runtime.resolve(command[0])
        if program is None:
            raise FileNotFoundError(
                f"executable {command[0]!r} not found in runtime {runtime.name} (PATH {runtime.search_path()})"
            )
        return rewrite_listen_host([program, *command[1:], *args], self.ip)

    def _waiting(self, c: Container, reason: str, message: str, backoff: float = 2.0) -> None:
        c.state = {"waiting": {"reason": reason, "message": message}}
        c.next_start = time.monotonic() + backoff
        self._event_once(f"{reason}:{c.name}", "Warning", "Failed", f"Error: {message}")

    def _start(self, c: Container) -> None:
        image = str(c.spec.get("image") or "")
        runtime = find_runtime(self.node.config.runtimes, image)
        if runtime is None:
            self._waiting(
                c,
                "ErrImagePull",
                f"the local node has no runtime for image {image!r}; add one to the node's image mapping",
                backoff=10.0,
            )
            return
        c.runtime = runtime
        rewriter = self._rewriter(c)
        try:
            env = self._env(c, runtime, rewriter)
            argv = self._argv(c, runtime, env, rewriter)
        except ConfigError as err:
            self._waiting(c, "CreateContainerConfigError", str(err))
            return
        except (FileNotFoundError, ValueError, KeyError, TypeError, ArithmeticError) as err:
            self._waiting(c, "CreateContainerError", f"{type(err).__name__}: {err}", backoff=10.0)
            return
        workdir = c.spec.get("workingDir")
        cwd = Path(rewriter.host_path(str(workdir))) if workdir else self.dir / "home"
        cwd.mkdir(parents=True, exist_ok=True)
        term = self._termination_file(c)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        log_path = self._log_file(c)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        c.oom_baseline = _oom_kills()
        c.killed_by_us = False
        c.kill_reason = ""
        c.known_children = set()
        c.env = env
        with log_path.open("ab") as out:
            try:
                c.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                    cwd=str(cwd), start_new_session=True,
                )  # fmt: skip
            except OSError as err:
                self._waiting(c, "CreateContainerError", f"{argv[0]}: {err}", backoff=10.0)
                return
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.ready = False
        c.started = False
        cap = self.node.config.probe_period_cap_s
        c.probes = {
            kind: ProbeState.make(kind, c.spec[f"{kind}Probe"], cap)
            for kind in ("startup", "readiness", "liveness")
            if not c.init and c.spec.get(f"{kind}Probe")
        }
        for p in c.probes.values():
            p.next_at = c.started_mono + float(p.spec.get("initialDelaySeconds") or 0)
        if "startup" not in c.probes:
            c.started = True
        self.node.record_event(
            self.pod, "Normal", "Started", f"Started container {c.name} (pid {c.proc.pid})"
        )
        log.info("pod %s/%s: started %s pid %d: %s", self.namespace, self.name, c.name, c.proc.pid, argv)

    # ----- exits --------------------------------------------------------------------------------------

    def _reap(self, c: Container) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        # The container is gone: anything left in its process group goes with it, as with a cgroup.
        signal_tree(c.proc.pid, signal.SIGKILL, c.known_children)
        reason = "Completed" if code == 0 else "Error"
        if code < 0:
            sig = -code
            exit_code = 128 + sig
            oom_now = _oom_kills()
            if (
                sig == signal.SIGKILL
                and not c.killed_by_us
                and c.oom_baseline is not None
                and oom_now is not None
                and oom_now > c.oom_baseline
            ):
                reason = "OOMKilled"
        else:
            exit_code = code
        message = self._termination_message(c, exit_code)
        if c.kill_reason and not message:
            message = c.kill_reason
        term: Obj = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": c.started_at,
            "finishedAt": now_rfc3339(),
            "containerID": f"local://{c.proc.pid}",
        }
        if code < 0:
            term["signal"] = -code
        if message:
            term["message"] = message
        c.state = {"terminated": term}
        c.ready = False
        c.proc = None
        ran = time.monotonic() - c.started_mono
        if c.init and exit_code == 0:
            c.done = True
            return
        if not self._restarts(exit_code):
            c.done = True
            if c.init:
                self.failed_init = True
            return
        cfg = self.node.config
        if ran > BACKOFF_RESET_S:
            c.backoff_streak = 0
        delay = min(cfg.backoff_max_s, cfg.backoff_base_s * (2**c.backoff_streak))
        c.backoff_streak += 1
        c.last_state = {"terminated": term}
        c.restart_count += 1
        c.next_start = time.monotonic() + delay
        if delay > 0:
            c.state = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": f"back-off {delay:g}s restarting failed container={c.name} pod={self.name}",
                }
            }
            self.node.record_event(
                self.pod, "Warning", "BackOff", f"Back-off restarting failed container {c.name}"
            )

    def _termination_message(self, c: Container, exit_code: int) -> str:
        try:
            with self._termination_file(c).open("rb") as f:
                message = f.read(TERMINATION_MESSAGE_MAX).decode("utf-8", errors="replace")
        except OSError:
            message = ""
        policy = c.spec.get("terminationMessagePolicy") or "File"
        if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
            message = _tail_text(self._log_file(c), FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES)
        return message

    # ----- probes -------------------------------------------------------------------------------------

    def _probe(self, c: Container) -> None:
        mono = time.monotonic()
        startup = c.probes.get("startup")
        if not c.started and startup is not None:
            if mono < startup.next_at:
                return
            ok, detail = self._run_probe(c, startup.spec)
            startup.next_at = mono + startup.period
            if ok:
                startup.successes += 1
                c.started = True
                # Readiness is checked right away rather than a full period later.
                if "readiness" in c.probes:
                    c.probes["readiness"].next_at = 0.0
            else:
                startup.failures += 1
                if startup.failures >= startup.failure_threshold:
                    self._restart_unhealthy(c, f"Startup probe failed: {detail}")
            return
        readiness = c.probes.get("readiness")
        if readiness is None:
            c.ready = True
        elif mono >= readiness.next_at:
            ok, detail = self._run_probe(c, readiness.spec)
            readiness.next_at = mono + readiness.period
            if ok:
                readiness.failures = 0
                readiness.successes += 1
                if readiness.successes >= readiness.success_threshold:
                    c.ready = True
            else:
                readiness.successes = 0
                readiness.failures += 1
                if readiness.failures >= readiness.failure_threshold and c.ready:
                    c.ready = False
                    self.node.record_event(
                        self.pod, "Warning", "Unhealthy", f"Readiness probe failed: {detail}"
                    )
        liveness = c.probes.get("liveness")
        if liveness is not None and mono >= liveness.next_at:
            ok, detail = self._run_probe(c, liveness.spec)
            liveness.next_at = mono + liveness.period
            if ok:
                liveness.failures = 0
            else:
                liveness.failures += 1
                if liveness.failures >= liveness.failure_threshold:
                    self._restart_unhealthy(c, f"Liveness probe failed: {detail}")

    def _restart_unhealthy(self, c: Container, why: str) -> None:
        self.node.record_event(self.pod, "Warning", "Unhealthy", why)
        self.node.record_event(
            self.pod, "Normal", "Killing", f"Container {c.name} failed a probe, will be restarted"
        )
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
        self._kill(c, grace, reason=why)
        if c.proc is not None:
            self._reap(c)

    def _port(self, c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports") or []:
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"no container port named {port!r}")

    def _run_probe(self, c: Container, spec: Obj) -> tuple[bool, str]:
        timeout = float(spec.get("timeoutSeconds") or 1)
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                host = str(h.get("host") or self.ip)
                port = self._port(c, h.get("port"))
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
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                with socket.create_connection(
                    (str(t.get("host") or self.ip), self._port(c, t.get("port"))), timeout
                ):
                    return True, ""
            if "exec" in spec:
                code, out = self._exec(c, [str(x) for x in spec["exec"].get("command") or []], timeout)
                return code == 0, out.strip()[-500:]
        except (OSError, ValueError, http.client.HTTPException) as err:
            return False, str(err) or type(err).__name__
        return False, "probe has no handler"

    def _exec(self, c: Container, command: list[str], timeout: float) -> tuple[int, str]:
        """Run a command "inside" the container: its runtime, env and path mapping."""
        runtime = c.runtime or find_runtime(self.node.config.runtimes, str(c.spec.get("image") or ""))
        if runtime is None or not command:
            return 1, "no runtime"
        rewriter = self._rewriter(c)
        argv = [rewriter.rewrite(x) for x in command]
        program = runtime.resolve(argv[0])
        if program is None:
            return 127, f"{argv[0]}: not found"
        try:
            done = subprocess.run(
                [program, *argv[1:]], env=c.env or runtime.base_env(), cwd=str(self.dir / "home"),
                capture_output=True, timeout=max(0.1, timeout), check=False, start_new_session=True,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return 1, f"command timed out after {timeout:g}s"
        return done.returncode, (done.stdout + done.stderr).decode(errors="replace")

    # ----- stopping -----------------------------------------------------------------------------------

    def _kill(self, c: Container, grace: float, reason: str = "") -> None:
        """SIGTERM the container's process tree, SIGKILL it after `grace` seconds (by PID)."""
        if not c.running() or c.proc is None:
            return
        c.killed_by_us = True
        c.kill_reason = reason
        signal_tree(c.proc.pid, signal.SIGTERM, c.known_children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(timeout=max(0.0, grace))
        signal_tree(c.proc.pid, signal.SIGKILL, c.known_children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(timeout=10)

    def _kill_all(self, grace: float) -> None:
        running = [c for c in self.init_containers + self.containers if c.running()]
        threads = [threading.Thread(target=self._kill, args=(c, grace)) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _terminate(self, pod: Obj) -> None:
        """Graceful deletion: preStop hooks, SIGTERM, the grace period, SIGKILL, then the object goes."""
        meta = pod["metadata"]
        grace = float(
            meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionGracePeriodSeconds") is not None
            else (pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30
        )
        deadline = time.monotonic() + grace
        running = [c for c in self.init_containers + self.containers if c.running()]
        for c in self.containers:
            c.ready = False
        if running:
            self._report()
            self.node.record_event(
                pod, "Normal", "Killing", f"Stopping container(s) {', '.join(c.name for c in running)}"
            )

        def stop_one(c: Container) -> None:
            hook = ((c.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
            if hook and self.node.config.run_prestop_hooks:
                self._exec(
                    c, [str(x) for x in hook.get("command") or []], max(0.0, deadline - time.monotonic())
                )
            self._kill(c, max(0.0, deadline - time.monotonic()))

        threads = [threading.Thread(target=stop_one, args=(c,)) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in running:
            if c.proc is not None:
                self._reap(c)
        self.node.delete_pod_object(self.namespace, self.name, self.uid)
        self._cleanup()

    def _cleanup(self) -> None:
        # emptyDirs and projected files go with the Pod; logs stay for a post-mortem.
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        shutil.rmtree(self.node.memory_dir / self.uid, ignore_errors=True)

    # ----- volumes ------------------------------------------------------------------------------------

    def _config_data(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        obj = self.node.api.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
        if obj is None:
            if optional:
                return {}
            raise ConfigError(f'{kind[:-1]} "{name}" not found')
        out: dict[str, bytes] = {}
        for k, v in (obj.get("data") or {}).items():
            out[str(k)] = base64.b64decode(v) if kind == "secrets" else str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[str(k)] = base64.b64decode(v)
        return out

    def _sync_volumes(self) -> None:
        """Create every volume's host folder and (re)write Secret and ConfigMap files when they change."""
        root = self.node.config.root
        errors = []
        for vol in (self.pod.get("spec") or {}).get("volumes") or []:
            name = str(vol["name"])
            local = self.dir / "volumes" / name
            if "persistentVolumeClaim" in vol:
                path = root / "pvc" / str(vol["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in vol:
                path = Path(str(vol["hostPath"]["path"]))
            elif "emptyDir" in vol:
                medium = (vol["emptyDir"] or {}).get("medium")
                path = (self.node.memory_dir / self.uid if medium == "Memory" else self.scratch_dir) / name
            elif "configMap" in vol or "secret" in vol:
                path = local
                try:
                    self._write_projection(vol, local)
                except ConfigError as err:
                    errors.append(f"MountVolume.SetUp failed for volume {name!r}: {err}")
            else:
                errors.append(f"volume {name!r}: this volume type is not supported by the local node")
                continue
            path.mkdir(parents=True, exist_ok=True)
            self.volumes[name] = path
        if errors:
            raise ConfigError("; ".join(errors))

    def _write_projection(self, vol: Obj, target: Path) -> None:
        if "configMap" in vol:
            src = vol["configMap"]
            data = self._config_data("configmaps", str(src.get("name")), bool(src.get("optional")))
        else:
            src = vol["secret"]
            data = self._config_data("secrets", str(src.get("secretName")), bool(src.get("optional")))
        mode = int(src.get("defaultMode") or 0o644)
        files: dict[str, tuple[bytes, int]] = {}
        if src.get("items"):
            for item in src["items"]:
                key = str(item["key"])
                if key not in data:
                    if src.get("optional"):
                        continue
                    raise ConfigError(f"key {key!r} not found")
                files[str(item["path"])] = (data[key], int(item.get("mode") or mode))
        else:
            files = {k: (v, mode) for k, v in data.items()}
        digest = json.dumps({k: [base64.b64encode(v).decode(), m] for k, (v, m) in sorted(files.items())})
        key = str(vol["name"])
        if self._config_hashes.get(key) == digest:
            return
        target.mkdir(parents=True, exist_ok=True)
        for rel, (content, fmode) in files.items():
            path = target / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(content)
            tmp.chmod(fmode & 0o777 | 0o600)
            tmp.replace(path)
        wanted = {str(target / rel) for rel in files}
        for existing in target.rglob("*"):
            if existing.is_file() and str(existing) not in wanted:
                existing.unlink()
        self._config_hashes[key] = digest

    # ----- status -------------------------------------------------------------------------------------

    def _phase(self) -> str:
        if self.failed_init:
            return "Failed"
        if any(not c.done for c in self.init_containers):
            return "Pending"
        states = [c.state for c in self.containers]
        if any("running" in s for s in states):
            return "Running"
        if all(c.done for c in self.containers) and self.containers:
            codes = [int(c.state["terminated"]["exitCode"]) for c in self.containers]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        if any(c.restart_count > 0 or "terminated" in c.state for c in self.containers):
            return "Running"
        return "Pending"

    def status(self) -> Obj:
        now = now_rfc3339()
        initialized = all(c.done for c in self.init_containers) and not self.failed_init
        ready = self.ready
        phase = self._phase()
        if phase in ("Succeeded", "Failed"):
            ready = False
            for c in self.containers:
                c.ready = False
        conditions: list[dict[str, Any]] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True" if initialized else "False"},
            {"type": "ContainersReady", "status": "True" if ready else "False"},
            {"type": "Ready", "status": "True" if ready else "False"},
        ]
        if not ready:
            unready = [c.name for c in self.containers if not c.ready]
            for cond in conditions[2:]:
                cond["reason"] = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
                cond["message"] = f"containers with unready status: [{' '.join(unready)}]"
        old = {c.get("type"): c for c in (self.pod.get("status") or {}).get("conditions") or []}
        for cond in conditions:
            prev = old.get(cond["type"])
            same = prev is not None and prev.get("status") == cond["status"]
            cond["lastTransitionTime"] = prev.get("lastTransitionTime") if same and prev else now
            cond["lastProbeTime"] = None
        status: Obj = {
            "phase": phase,
            "conditions": conditions,
            "hostIP": HOST_IP,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        return status

    def _report(self) -> None:
        status = self.status()
        comparable = json.dumps(
            {
                **status,
                "conditions": [
                    {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
                ],
            },
            sort_keys=True,
        )
        if comparable == (json.dumps(self._last_status, sort_keys=True) if self._last_status else None):
            return
        try:
            self.node.api.strategic_patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": status}
            )
        except ApiError as err:
            if err.status != 404:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, err)
            return
        self._last_status = json.loads(comparable)

    def _event_once(self, key: str, type_: str, reason: str, message: str) -> None:
        if key in self._events_sent:
            return
        self._events_sent.add(key)
        self.node.record_event(self.pod, type_, reason, message)


# --------------------------------------------------------------------------------------------- the node


class LocalNode:
    """Registers a Node, binds unscheduled Pods to it and runs them; `stop()` ends every process it started."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.config.root = Path(config.root).resolve()
        self.api = KubeApi(config.kubeconfig)
        parsed = urllib.parse.urlparse(self.api.base)
        self.api_host = parsed.hostname or HOST_IP
        self.api_port = parsed.port or 443
        self.memory_dir = self._memory_root()
        self.allocatable = self._capacity()
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._unschedulable: set[str] = set()
        self._ips: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        self.pods = Informer(self.api, "/api/v1/pods", self._on_pod, name="pods")
        self.on_pods_changed: list[Callable[[], None]] = []

    # ----- lifecycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        for sub in ("pvc", "pods"):
            (self.config.root / sub).mkdir(parents=True, exist_ok=True)
        self._register()
        self.pods.start()
        if not self.pods.wait_synced(timeout):
            raise RuntimeError("the local node could not list Pods from the API server")
        for target, name in ((self._sync_loop, "node-sync"), (self._heartbeat_loop, "node-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("local node %s ready (root %s)", self.config.name, self.config.root)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every Pod process (SIGTERM, then SIGKILL after `grace`); API objects are left as they are."""
        self._stop.set()
        self._wake.set()
        self.pods.stop()
        with self._lock:
            workers = list(self._workers.values())
        threads = [threading.Thread(target=w.stop, args=(grace,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def request_stop(self) -> None:
        """Make `wait()` return (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def wait(self) -> None:
        """Block until `stop()` is called (from a signal handler or another thread)."""
        while not self._stop.wait(1.0):
            pass

    # ----- queries ------------------------------------------------------------------------------------

    def current_pod(self, namespace: str, name: str, uid: str) -> Obj | None:
        pod = self.pods.get(namespace, name)
        if pod is None or (pod.get("metadata") or {}).get("uid") != uid:
            return None
        return pod

    def workers(self) -> list[PodWorker]:
        with self._lock:
            return list(self._workers.values())

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        return next((w for w in self.workers() if w.namespace == namespace and w.name == name), None)

    def pids(self) -> dict[str, list[int]]:
        return {f"{w.namespace}/{w.name}": w.pids() for w in self.workers()}

    # ----- API helpers --------------------------------------------------------------------------------

    def record_event(self, obj: Obj, type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        ns = str(meta.get("namespace") or "default")
        stamp = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj.get("kind", "Pod"),
                "name": meta.get("name"),
                "namespace": ns,
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "kubelet", "host": self.config.name},
            "reportingComponent": "tuneops-local-node",
            "reportingInstance": self.config.name,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.api.create(f"/api/v1/namespaces/{ns}/events", body)
        except Exception as exc:  # an Event is advisory
            log.debug("event %s on %s failed: %s", reason, meta.get("name"), exc)

    def delete_pod_object(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.api.delete(
                f"/api/v1/namespaces/{namespace}/pods/{name}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
            )
        except ApiError as err:
            if err.status != 409:  # 409: a newer Pod of the same name; ours is gone already
                log.warning("deleting pod %s/%s failed: %s", namespace, name, err)

    # ----- node object --------------------------------------------------------------------------------

    def _memory_root(self) -> Path:
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            return shm / f"tuneops-{self.config.name}-{os.getuid()}"
        return self.config.root / "memory"

    @staticmethod
    def _capacity() -> dict[str, str]:
        mem_kib = 0
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
        disk = shutil.disk_usage("/")
        return {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{mem_kib}Ki",
            "pods": "110",
            "ephemeral-storage": f"{disk.total // 1024}Ki",
        }

    def _node_status(self) -> Obj:
        stamp = now_rfc3339()
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        boot_id = ""
        with contextlib.suppress(OSError):
            boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        machine_id = ""
        with contextlib.suppress(OSError):
            machine_id = Path("/etc/machine-id").read_text().strip()
        return {
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": self.config.name},
            ],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "the local node runs Pods as local processes",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp,
                },
                *(
                    {
                        "type": t,
                        "status": "False",
                        "reason": f"KubeletHas{r}",
                        "lastHeartbeatTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                    for t, r in (
                        ("MemoryPressure", "SufficientMemory"),
                        ("DiskPressure", "NoDiskPressure"),
                        ("PIDPressure", "SufficientPID"),
                    )
                ),
            ],
            "nodeInfo": {
                "architecture": arch,
                "bootID": boot_id,
                "containerRuntimeVersion": "local://tuneops",
                "kernelVersion": platform.release(),
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": machine_id,
                "operatingSystem": "linux",
                "osImage": platform.platform(),
                "systemUUID": machine_id,
            },
        }

    def _register(self) -> None:
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
        labels = {
            "kubernetes.io/hostname": self.config.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": arch,
            "node.kubernetes.io/instance-type": "local",
            **self.config.labels,
        }
        path = f"/api/v1/nodes/{self.config.name}"
        if self.api.get(path) is None:
            self.api.create(
                "/api/v1/nodes",
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {"name": self.config.name, "labels": labels},
                },
            )
        else:
            self.api.merge_patch(path, {"metadata": {"labels": labels}})
        self.api.merge_patch(path + "/status", {"status": self._node_status()})

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self._register()
            except Exception as exc:  # the API may be restarting; the next beat retries
                log.debug("heartbeat failed: %s", exc)

    # ----- scheduling and pod workers -----------------------------------------------------------------

    def _on_pod(self, obj: Obj | None) -> None:
        self._wake.set()
        if obj is not None:
            uid = (obj.get("metadata") or {}).get("uid")
            with self._lock:
                w = self._workers.get(str(uid))
            if w is not None:
                w.wake.set()
        for callback in self.on_pods_changed:
            callback()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._sync()
            except Exception:
                log.exception("node sync failed")

    def _sync(self) -> None:
        pods = self.pods.items()
        live: set[str] = set()
        for pod in pods:
            meta = pod.get("metadata") or {}
            spec = pod.get("spec") or {}
            uid = str(meta.get("uid"))
            live.add(uid)
            node_name = spec.get("nodeName")
            if not node_name:
                if not meta.get("deletionTimestamp"):
                    self._schedule(pod)
                continue
            if node_name != self.config.name:
                continue
            with self._lock:
                worker = self._workers.get(uid)
            if worker is not None:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):
                    self.delete_pod_object(str(meta["namespace"]), str(meta["name"]), uid)
                continue
            if self._stop.is_set():
                return
            worker = PodWorker(self, pod, self._allocate_ip(pod))
            with self._lock:
                self._workers[uid] = worker
            worker.start()
        with self._lock:
            gone = [uid for uid, w in self._workers.items() if w.finished.is_set() and uid not in live]
            for uid in gone:
                self._workers.pop(uid, None)
                self._ips.pop(uid, None)
        self._unschedulable &= live

    def _allocate_ip(self, pod: Obj) -> str:
        uid = str(pod["metadata"]["uid"])
        with self._lock:
            used = set(self._ips.values())
            previous = str((pod.get("status") or {}).get("podIP") or "")
            if previous.startswith(self.config.ip_prefix + ".") and previous not in used:
                self._ips[uid] = previous
                return previous
            n = 0
            while True:
                n += 1
                ip = f"{self.config.ip_prefix}.{n // 250}.{n % 250 + 2}"
                if ip not in used:
                    self._ips[uid] = ip
                    return ip

    def _schedule(self, pod: Obj) -> None:
        meta = pod["metadata"]
        spec = pod.get("spec") or {}
        uid = str(meta["uid"])
        if uid in self._unschedulable:
            return
        if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
            return
        problem = None
        gpu = requests_gpu(pod)
        if gpu:
            problem = f"0/1 nodes are available: 1 Insufficient {gpu}. The local node has no GPU."
        selector = spec.get("nodeSelector") or {}
        node_labels = {
            "kubernetes.io/hostname": self.config.name,
            "kubernetes.io/os": "linux",
            **self.config.labels,
        }
        missing = {k: v for k, v in selector.items() if node_labels.get(k) != v and k != "kubernetes.io/arch"}
        if problem is None and missing:
            problem = f"0/1 nodes are available: 1 node(s) didn't match node selector {missing}."
        ns, name = str(meta["namespace"]), str(meta["name"])
        if problem is not None:
            self._unschedulable.add(uid)
            self.record_event(pod, "Warning", "FailedScheduling", problem)
            with contextlib.suppress(ApiError):
                self.api.strategic_patch(
                    f"/api/v1/namespaces/{ns}/pods/{name}/status",
                    {"status": {"phase": "Pending", "conditions": [
                        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "message": problem, "lastTransitionTime": now_rfc3339(), "lastProbeTime": None}]}},
                )  # fmt: skip
            return
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.name},
        }
        try:
            self.api.create(f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding)
        except ApiError as err:
            if err.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", ns, name, err)
            return
        self.record_event(
            pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {self.config.name}"
        )
