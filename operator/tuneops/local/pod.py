"""One Pod on the local node, run on its own thread: volumes, init containers, processes, probes, status, deletion."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneops import proctree
from tuneops.kube.client import POD, ApiError
from tuneops.local import backoff, podstatus, probes
from tuneops.local import engine as ctr
from tuneops.local.container import Container, exit_code, now_rfc3339
from tuneops.local.podenv import (
    HOST_IP,
    ConfigError,
    Placement,
    command_line,
    declared_env,
    process_env,
)
from tuneops.local.runtimes import Runtime, find_runtime
from tuneops.local.translate import Mount, PathRewriter
from tuneops.local.volumes import API_ACCESS_VOLUME, SA_MOUNT, Volumes

if TYPE_CHECKING:
    from tuneops.local.node import LocalNode

log = logging.getLogger(__name__)

Obj = dict[str, Any]

DEFAULT_TERMINATION_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


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
        self.evicted: str | None = None
        """Why the node evicted the Pod (an emptyDir over its sizeLimit); it then runs nothing more."""
        self.volume_error: str | None = None
        self.volumes = Volumes(
            node.api, self.namespace, claims=node.config.root / "pvc", local=self.dir / "volumes",
            scratch=self.scratch_dir, memory=node.memory_dir / self.uid,
        )  # fmt: skip
        self.engine = node.config.engine
        if self.engine is not None:
            fs_group = (spec.get("securityContext") or {}).get("fsGroup")
            self.volumes.api_access = True
            self.volumes.fs_group = int(fs_group) if fs_group is not None else None
        self._next_refresh = 0.0
        self._last_reported: str | None = None
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
        if self.engine is not None:
            for c in self._all():
                if c.engine_name:
                    self.engine.remove(c.engine_name)

    @property
    def ready(self) -> bool:
        return bool(self.containers) and all(c.ready for c in self.containers)

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self._all() if c.running() and c.proc]

    def container_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for c in self.containers:
            for p in c.spec.get("ports") or []:
                if p.get("name"):
                    ports[str(p["name"])] = int(p["containerPort"])
        return ports

    def status(self) -> Obj:
        status = podstatus.pod_status(
            self.pod, self.init_containers, self.containers, self.failed_init, self.ip, self.start_time
        )
        if self.evicted is not None:
            status.update(phase="Failed", reason="Evicted", message=self.evicted)
        return status

    # ----- the loop -----------------------------------------------------------------------------------

    def _all(self) -> list[Container]:
        return self.init_containers + self.containers

    def _adopt(self, pod: Obj) -> None:
        """Carry restart counts over from a Pod this node ran before it restarted."""
        status = pod.get("status") or {}
        for key, group in (
            ("initContainerStatuses", self.init_containers),
            ("containerStatuses", self.containers),
        ):
            seen = {s.get("name"): s for s in status.get(key) or []}
            for c in group:
                if c.name in seen:
                    self._adopt_one(c, seen[c.name])

    def _adopt_one(self, c: Container, seen: Obj) -> None:
        c.restart_count = int(seen.get("restartCount") or 0)
        state = seen.get("state") or {}
        if "terminated" in state:
            c.state = state
            code = int(state["terminated"].get("exitCode", 1))
            c.done = (c.init and code == 0) or not backoff.restarts(self.restart_policy, code)
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
            c.done = not c.init and not backoff.restarts(self.restart_policy, 137)
        else:
            return
        if not c.done:
            c.last_state = c.state
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
        if (
            podstatus.phase(self.init_containers, self.containers, self.failed_init)
            in (
                "Succeeded",
                "Failed",
            )
            or self.evicted is not None
        ):
            return  # nothing runs any more; only deletion is left to handle
        mono = time.monotonic()
        if mono >= self._next_refresh:
            self._next_refresh = mono + self.node.config.config_refresh_s
            try:
                self.volumes.sync(self.pod)
                self.volume_error = None
            except ConfigError as err:
                self.volume_error = str(err)
            over = self.volumes.over_limit(self.pod)
            if over is not None:
                self._evict(over)
                return
        if self.volume_error is not None and not any(c.proc for c in self._all()):
            # As on a real node: the containers wait without a message; the Event says which volume.
            for c in self._all():
                c.state = {"waiting": {"reason": "ContainerCreating"}}
            self._event_once(f"FailedMount:{self.volume_error}", "Warning", "FailedMount", self.volume_error)
            return
        if self.failed_init:
            return
        # Init containers, one at a time and in order; a native sidecar lets the next one start once it runs
        # (and has passed its startup probe), and keeps running beside them.
        for c in self.init_containers:
            if c.sidecar:
                self._drive(c)
                if c.running():
                    self._probe(c)
                    c.done = c.done or c.started or not c.spec.get("startupProbe")
                if not c.done:
                    return
                continue
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
        if c.running() and self.engine is not None and c.engine_name and not c.engine_id:
            c.engine_id = self.engine.container_id(c.engine_name)
        if (c.done and not c.sidecar) or c.running() or time.monotonic() < c.next_start:
            return
        self._start(c)

    # ----- starting -----------------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        for sub in ("volumes", "containers", "logs", "home"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)

    def _mounts(self, c: Container) -> list[Mount]:
        mounts = []
        for vm in c.spec.get("volumeMounts") or []:
            host = self.volumes.paths.get(str(vm["name"]))
            if host is None:
                continue
            if vm.get("subPath"):
                host = host / str(vm["subPath"])
                if not host.exists():
                    host.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(str(vm["mountPath"]), str(host)))
        api_access = self.volumes.paths.get(API_ACCESS_VOLUME)
        if api_access is not None:
            mounts.append(Mount(SA_MOUNT, str(api_access)))
        term_path = str(c.spec.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH)
        mounts.append(Mount(term_path, str(self._termination_file(c))))
        return mounts

    def _read_only_mounts(self, c: Container) -> list[str]:
        paths = [str(vm["mountPath"]) for vm in c.spec.get("volumeMounts") or [] if vm.get("readOnly")]
        return [*paths, SA_MOUNT] if API_ACCESS_VOLUME in self.volumes.paths else paths

    def _termination_file(self, c: Container) -> Path:
        return self.dir / "containers" / c.name / "termination-log"

    def _log_file(self, c: Container) -> Path:
        return self.dir / "logs" / c.name / f"{c.restart_count}.log"

    def _rewriter(self, c: Container) -> PathRewriter:
        return PathRewriter(self._mounts(c), keep=[str(self.node.config.root)])

    def _placement(self) -> Placement:
        node = self.node
        return Placement(
            self.pod, self.ip, str(self.dir / "home"), node.api_host, node.api_port, node.allocatable
        )

    def _waiting(self, c: Container, reason: str, message: str, backoff: float = 2.0) -> None:
        c.state = {"waiting": {"reason": reason, "message": message}}
        c.next_start = time.monotonic() + backoff
        self._event_once(f"{reason}:{c.name}:{message}", "Warning", "Failed", f"Error: {message}")

    def _pull(self, c: Container) -> Runtime | None:
        runtime, events = backoff.pull(c, self.node.config)
        for type_, reason, message in events:
            self.node.record_event(self.pod, type_, reason, message)
        return runtime

    def _command(self, c: Container, runtime: Runtime, rewriter: PathRewriter) -> list[str] | None:
        """The container's environment (into `c.env`) and command line; None after setting it waiting."""
        place = self._placement()
        try:
            declared = declared_env(c.spec, place, self.volumes.config)
            c.env = process_env(c.spec, declared, runtime.base_env(), rewriter, place, self._mounts(c))
            return command_line(c.spec, runtime, c.env, rewriter, self.ip)
        except ConfigError as err:
            self._waiting(c, "CreateContainerConfigError", str(err))
        except (FileNotFoundError, ValueError, KeyError, TypeError, ArithmeticError) as err:
            self._waiting(c, "CreateContainerError", f"{type(err).__name__}: {err}", backoff=10.0)
        return None

    def _start(self, c: Container) -> None:
        if self.engine is not None:
            self._start_container(c, self.engine)
            return
        runtime = self._pull(c)
        if runtime is None:
            return
        c.runtime = runtime
        rewriter = self._rewriter(c)
        argv = self._command(c, runtime, rewriter)
        if argv is None:
            return
        workdir = c.spec.get("workingDir")
        cwd = Path(rewriter.host_path(str(workdir))) if workdir else self.dir / "home"
        cwd.mkdir(parents=True, exist_ok=True)
        term = self._termination_file(c)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        log_path = self._log_file(c)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        c.oom_baseline = proctree.oom_kills()
        c.killed_by_us = False
        c.kill_reason = ""
        c.known_children = set()
        with log_path.open("ab") as out:
            try:
                c.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=c.env,
                    cwd=str(cwd), start_new_session=True,
                )  # fmt: skip
            except OSError as err:
                self._waiting(c, "CreateContainerError", f"{argv[0]}: {err}", backoff=10.0)
                return
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.arm_probes(c.started_mono, self.node.config.probe_period_cap_s)
        self.node.record_event(
            self.pod, "Normal", "Started", f"Started container {c.name} (pid {c.proc.pid})"
        )
        log.info("pod %s/%s: started %s pid %d: %s", self.namespace, self.name, c.name, c.proc.pid, argv)

    def _start_container(self, c: Container, engine: ctr.Engine) -> None:
        """Container mode: `podman run` of the container's image, as a kubelet would create it."""
        image = str(c.spec.get("image") or "")
        image_id = engine.image_id(image)
        if image_id is None:
            why = "not in the local node's image storage (build it with `make images`; nothing is pulled)"
            for event in backoff.pull_failed(c, self.node.config, image, why):
                self.node.record_event(self.pod, *event)
            return
        c.pull_failures = 0
        place = self._placement()
        try:
            declared = declared_env(c.spec, place, self.volumes.config)
            env = ctr.kubelet_env(declared, place)
            name = f"k8s_{c.name}_{self.name}_{self.namespace}_{self.uid[:8]}_{c.restart_count}"[:250]
            argv = ctr.run_argv(
                engine, self.pod, c.spec, name=name, env=env, mounts=self._mounts(c),
                read_only=self._read_only_mounts(c), ip=self.ip,
                labels={ctr.NODE_LABEL: str(self.node.config.root)},
            )  # fmt: skip
        except ConfigError as err:
            self._waiting(c, "CreateContainerConfigError", str(err))
            return
        except (ValueError, KeyError, TypeError, ArithmeticError) as err:
            self._waiting(c, "CreateContainerError", f"{type(err).__name__}: {err}", backoff=10.0)
            return
        term = self._termination_file(c)
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        term.chmod(0o666)  # the container's user writes it, whoever that is
        log_path = self._log_file(c)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        engine.remove(name)  # a leftover of this name from a node that stopped without cleaning up
        c.killed_by_us = False
        c.kill_reason = ""
        c.oom_killed = False
        c.known_children = set()
        with log_path.open("ab") as out:
            try:
                c.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=engine.env(),
                    start_new_session=True,
                )  # fmt: skip
            except OSError as err:
                self._waiting(c, "CreateContainerError", f"{argv[0]}: {err}", backoff=10.0)
                return
        c.engine_name = name
        c.engine_id = None
        c.image_id = image_id
        c.started_at = now_rfc3339()
        c.started_mono = time.monotonic()
        c.state = {"running": {"startedAt": c.started_at}}
        c.arm_probes(c.started_mono, self.node.config.probe_period_cap_s)
        self.node.record_event(self.pod, "Normal", "Started", f"Started container {c.name} ({name})")
        log.info("pod %s/%s: started container %s: %s", self.namespace, self.name, c.name, argv)

    # ----- exits --------------------------------------------------------------------------------------

    def _reap(self, c: Container) -> None:
        assert c.proc is not None
        code = c.proc.returncode
        if self.engine is not None and c.engine_name:
            record = self.engine.inspect(c.engine_name)
            state = record.get("State") if record else None
            if record:
                # Kept for inspection after the container is removed, as a runtime keeps exited containers.
                path = self.dir / "containers" / c.name / f"container-{c.restart_count}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record, indent=1, default=str))
            if code in ENGINE_ERRORS and not _started(state):
                # The runtime could not start the process (no such executable, a bad mount): as a kubelet
                # reports it, StartError with exit code 128 and the runtime's message.
                c.start_error = proctree.tail(self._log_file(c), lines=5, limit=1024).strip()
                code = 128
            elif state is not None and isinstance(state.get("ExitCode"), int):
                code = int(state["ExitCode"])
            if state is not None:
                c.oom_killed = bool(state.get("OOMKilled"))
                c.engine_id = c.engine_id or str(state.get("Id") or "") or None
            self.engine.remove(c.engine_name)
        # The container is gone: anything left in its process group goes with it, as with a cgroup.
        proctree.signal_tree(c.proc.pid, signal.SIGKILL, c.known_children)
        message = self._termination_message(c, exit_code(code)) or c.kill_reason
        term = c.terminated(code, proctree.oom_kills(), message)
        c.state = {"terminated": term}
        c.ready = False
        c.proc = None
        ran = time.monotonic() - c.started_mono
        if c.sidecar:
            self._back_off(c, term, ran)  # restarted whatever its exit code, as long as the Pod runs
        elif c.init and term["exitCode"] == 0:
            c.done = True
        elif not backoff.restarts(self.restart_policy, term["exitCode"]):
            c.done = True
            self.failed_init = self.failed_init or c.init
        else:
            self._back_off(c, term, ran)

    def _back_off(self, c: Container, term: Obj, ran: float) -> None:
        pod_ref = f"{self.name}_{self.namespace}({self.uid})"
        event = backoff.crash_back_off(c, term, ran, self.node.config, pod_ref)
        if event is not None:
            self.node.record_event(self.pod, *event)

    def _termination_message(self, c: Container, exit_code: int) -> str:
        try:
            with self._termination_file(c).open("rb") as f:
                message = f.read(TERMINATION_MESSAGE_MAX).decode("utf-8", errors="replace")
        except OSError:
            message = ""
        policy = c.spec.get("terminationMessagePolicy") or "File"
        if not message.strip() and policy == "FallbackToLogsOnError" and exit_code != 0:
            message = proctree.tail(self._log_file(c), lines=FALLBACK_LOG_LINES, limit=FALLBACK_LOG_BYTES)
        return message

    # ----- probes -------------------------------------------------------------------------------------

    def _probe(self, c: Container) -> None:
        def check(spec: Obj) -> tuple[bool, str]:
            return probes.run_probe(spec, c.spec, self.ip, lambda cmd, timeout: self._exec(c, cmd, timeout))

        for finding in probes.advance(c, time.monotonic(), check):
            if finding.action == "unready":
                self.node.record_event(self.pod, "Warning", "Unhealthy", finding.message)
            else:
                self._restart_unhealthy(c, finding.message)

    def _restart_unhealthy(self, c: Container, why: str) -> None:
        self.node.record_event(self.pod, "Warning", "Unhealthy", why)
        self.node.record_event(
            self.pod, "Normal", "Killing", f"Container {c.name} failed a probe, will be restarted"
        )
        grace = float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30)
        self._kill(c, grace, reason=why)
        if c.proc is not None:
            self._reap(c)

    def _exec(self, c: Container, command: list[str], timeout: float) -> tuple[int, str]:
        """Run a command "inside" the container: its runtime, env and path mapping."""
        if self.engine is not None:
            if not c.engine_name or not command:
                return 1, "no container"
            try:
                done = subprocess.run(
                    [*self.engine.base(), "exec", c.engine_name, *command], env=self.engine.env(),
                    capture_output=True, timeout=max(0.1, timeout), check=False, start_new_session=True,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                return 1, f"command timed out after {timeout:g}s"
            return done.returncode, (done.stdout + done.stderr).decode(errors="replace")
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
        if self.engine is not None and c.engine_name:
            # The engine delivers the signals to the container's processes (its own PID namespace).
            self.engine.kill(c.engine_name, "TERM")
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=max(0.0, grace))
            if c.proc.poll() is None:
                self.engine.kill(c.engine_name, "KILL")
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(timeout=30)
            return
        proctree.signal_tree(c.proc.pid, signal.SIGTERM, c.known_children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(timeout=max(0.0, grace))
        proctree.signal_tree(c.proc.pid, signal.SIGKILL, c.known_children)
        with contextlib.suppress(subprocess.TimeoutExpired):
            c.proc.wait(timeout=10)

    def _kill_all(self, grace: float) -> None:
        _in_parallel(lambda c: self._kill(c, grace), [c for c in self._all() if c.running()])

    def _terminate(self, pod: Obj) -> None:
        """Graceful deletion: preStop hooks, SIGTERM, the grace period, SIGKILL, then the object goes."""
        meta = pod["metadata"]
        grace = float(
            meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionGracePeriodSeconds") is not None
            else (pod.get("spec") or {}).get("terminationGracePeriodSeconds") or 30
        )
        deadline = time.monotonic() + grace
        running = [c for c in self._all() if c.running()]
        for c in self.containers:
            c.ready = False
        if running:
            self._report()
            names = ", ".join(c.name for c in running)
            self.node.record_event(pod, "Normal", "Killing", f"Stopping container(s) {names}")

        def stop_one(c: Container) -> None:
            hook = ((c.spec.get("lifecycle") or {}).get("preStop") or {}).get("exec")
            if hook and self.node.config.run_prestop_hooks:
                self._exec(
                    c, [str(x) for x in hook.get("command") or []], max(0.0, deadline - time.monotonic())
                )
            self._kill(c, max(0.0, deadline - time.monotonic()))

        _in_parallel(stop_one, running)
        for c in running:
            if c.proc is not None:
                self._reap(c)
        self.node.delete_pod_object(self.namespace, self.name, self.uid)
        self._cleanup()

    def _evict(self, message: str) -> None:
        """As the kubelet's local-storage eviction: the containers are stopped at once and never restarted, and
        the Pod fails with reason Evicted (its controller makes a new one)."""
        self.evicted = message
        self.node.record_event(self.pod, "Warning", "Evicted", message)
        for c in self._all():
            c.ready = False
        self._kill_all(0.0)
        for c in self._all():
            if c.proc is not None:
                self._reap(c)
            c.done = True
        self.node.record_event(self.pod, "Normal", "Killing", "Stopping container(s): the Pod was evicted")
        log.info("pod %s/%s: evicted: %s", self.namespace, self.name, message)

    def _cleanup(self) -> None:
        # emptyDirs and projected files go with the Pod; logs stay for a post-mortem.
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        shutil.rmtree(self.node.memory_dir / self.uid, ignore_errors=True)

    # ----- status -------------------------------------------------------------------------------------

    def _report(self) -> None:
        status = self.status()
        comparable = podstatus.comparable(status)
        if comparable == self._last_reported:
            return
        try:
            self.node.api.patch(POD, self.namespace, self.name, {"status": status}, "status", strategic=True)
        except ApiError as err:
            if err.status != 404:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, err)
            return
        self._last_reported = comparable

    def _event_once(self, key: str, type_: str, reason: str, message: str) -> None:
        if key in self._events_sent:
            return
        self._events_sent.add(key)
        self.node.record_event(self.pod, type_, reason, message)


# podman run's own exit codes: 125 the engine failed, 126 the command cannot run, 127 it does not exist.
ENGINE_ERRORS = frozenset({125, 126, 127})


def _started(state: Obj | None) -> bool:
    """Whether the container's process ever ran (podman leaves StartedAt at the zero time otherwise)."""
    started = str((state or {}).get("StartedAt") or "")
    return bool(started) and not started.startswith("0001-01-01")


def _in_parallel(work: Callable[[Container], None], containers: list[Container]) -> None:
    threads = [threading.Thread(target=work, args=(c,)) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
