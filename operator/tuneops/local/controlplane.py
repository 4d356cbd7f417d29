"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from tuneops import proctree, toolpaths
from tuneops.local import components
from tuneops.local.audit import AuditEvent, AuditLog
from tuneops.local.components import HOST, Ports
from tuneops.local.credentials import (
    ADMIN_USER,
    CONTROLLER_MANAGER_USER,
    ControlPlaneError,
    ensure_pki,
    read_tokens,
    safe_name,
    write_kubeconfig,
    write_tokens,
)
from tuneops.serving.process import free_port

__all__ = ["AuditEvent", "AuditLog", "ControlPlane", "ControlPlaneError", "binaries_missing"]

AuthorizationMode = Literal["AlwaysAllow", "RBAC"]


def _port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def binaries_missing(bin_dir: Path | None = None) -> list[str]:
    """Paths of required binaries that are absent; empty when the control plane can start."""
    bin_dir = bin_dir or toolpaths.kube_bin_dir()
    missing = [
        str(bin_dir / b) for b in ("kube-apiserver", "kube-controller-manager") if not (bin_dir / b).is_file()
    ]
    if shutil.which("etcd") is None:
        missing.append("etcd (Debian package etcd-server)")
    return missing


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on 127.0.0.1, private ports, stopped by PID.

    Files live under `data_dir` (a fresh temporary folder unless given): `pki/` (CA, serving cert,
    service-account keys), `tokens.csv`, `etcd/`, `logs/`, `audit.log`, `kubeconfig` and `state.json`
    (PIDs and ports, so another process can `attach()` and stop it). A given data dir is kept on stop
    and reused on the next start (same CA, tokens and etcd data); a temporary one is removed.
    """

    data_dir: Path | None = None
    authorization_mode: AuthorizationMode = "AlwaysAllow"
    audit: bool = False
    controller_manager: bool = True
    # Extra static-token users: name -> groups. Tokens are generated; see token_for() / kubeconfig_for().
    users: Mapping[str, Sequence[str]] = field(default_factory=dict)
    bin_dir: Path | None = None
    etcd_binary: str | None = None
    extra_apiserver_args: Sequence[str] = ()
    extra_controller_manager_args: Sequence[str] = ()
    # Kill the servers when the starting process dies (set by test fixtures; `tuneops local up` leaves them running).
    die_with_parent: bool = False
    keep_data: bool | None = None

    root: Path = field(init=False, repr=False)
    kubeconfig_path: Path = field(init=False, repr=False)
    ca_path: Path = field(init=False, repr=False)
    audit_log_path: Path = field(init=False, repr=False)
    log_dir: Path = field(init=False, repr=False)
    state_path: Path = field(init=False, repr=False)
    _ports: Ports = field(default_factory=Ports, init=False, repr=False)
    _procs: dict[str, _Proc] = field(default_factory=dict, init=False, repr=False)
    _tokens: dict[str, str] = field(default_factory=dict, init=False, repr=False)
    _temporary: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.authorization_mode not in ("AlwaysAllow", "RBAC"):
            raise ValueError(
                f"authorization_mode must be AlwaysAllow or RBAC, not {self.authorization_mode!r}"
            )
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="tuneops-cp-"))
            self._temporary = True
        root = self.root = self.data_dir = Path(self.data_dir).resolve()
        self.kubeconfig_path = root / "kubeconfig"
        self.ca_path = root / "pki" / "ca.crt"
        self.audit_log_path = root / "audit.log"
        self.log_dir = root / "logs"
        self.state_path = root / "state.json"
        if self.keep_data is None:
            self.keep_data = not self._temporary

    # ----- connection details ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._ports.apiserver

    @property
    def server_url(self) -> str:
        if not self._ports.apiserver:
            raise ControlPlaneError("the control plane has not been started")
        return f"https://{HOST}:{self._ports.apiserver}"

    @property
    def etcd_url(self) -> str:
        return self._ports.etcd_url

    @property
    def token(self) -> str:
        """The admin bearer token (user `admin`, group system:masters)."""
        return self.token_for(ADMIN_USER)

    def token_for(self, user: str) -> str:
        self._load_tokens()
        try:
            return self._tokens[user]
        except KeyError:
            raise ControlPlaneError(f"no static token for user {user!r}; declare it in users=") from None

    @property
    def audit_log(self) -> AuditLog:
        if not self.audit:
            raise ControlPlaneError("the audit log is off; create the ControlPlane with audit=True")
        return AuditLog(self.audit_log_path)

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self._procs.items() if p.pid is not None}

    def env(self, inherit: bool = False) -> dict[str, str]:
        """`KUBECONFIG` for this control plane, optionally on top of the current environment."""
        base = dict(os.environ) if inherit else {}
        base["KUBECONFIG"] = str(self.kubeconfig_path)
        return base

    def kubeconfig_for(self, user: str) -> Path:
        """A kubeconfig that authenticates as `user` (admin or one of `users`)."""
        path = self.kubeconfig_path if user == ADMIN_USER else self.root / f"kubeconfig-{safe_name(user)}"
        self._write_kubeconfig(path, user)
        return path

    # ----- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        """Start all servers and return once the API is ready, `default` exists and controllers run."""
        self._check_can_start()
        deadline = time.monotonic() + timeout
        for sub in ("pki", "logs", "etcd"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etcd").chmod(0o700)
        self._prepare_credentials()
        self._choose_ports()
        try:
            self._launch("etcd", self._etcd_argv())
            self._wait(lambda: self._http_ok(f"{self.etcd_url}/health"), "etcd", deadline)
            self._launch("kube-apiserver", self._apiserver_argv())
            self._write_kubeconfig(self.kubeconfig_path, ADMIN_USER)
            for user in self.users:
                self.kubeconfig_for(user)
            self._wait_apiserver(deadline)
            if self.controller_manager:
                self._start_controller_manager(deadline)
            self._save_state()
        except BaseException:
            self.stop()
            raise

    def _check_can_start(self) -> None:
        missing = binaries_missing(self.bin_dir)
        if missing:
            raise ControlPlaneError(
                "control plane binaries missing: "
                + ", ".join(missing)
                + ". Run `make kube` (scripts/build-kube.sh) to build them."
            )
        if self.running():
            raise ControlPlaneError(f"a control plane already runs from {self.root} (pids {self.pids()})")
        if self.state_path.exists():
            other = ControlPlane.attach(self.root)
            if other.running():
                raise ControlPlaneError(
                    f"a control plane already runs from {self.root} (pids {other.pids()})"
                )
            self.state_path.unlink()  # left by a process that died without stopping its servers

    def _start_controller_manager(self, deadline: float) -> None:
        self._write_kubeconfig(self.root / "kubeconfig-controller-manager", CONTROLLER_MANAGER_USER)
        self._launch("kube-controller-manager", self._controller_manager_argv())
        # The service-account controller creating `default/default` shows the controllers are running.
        self._wait(
            lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
            "kube-controller-manager",
            deadline,
        )

    def stop(self, grace: float = 10.0) -> None:
        """Stop every process we started, by PID: SIGTERM, then SIGKILL after `grace` seconds."""
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            self._terminate(name, grace)
        self._procs.clear()
        with contextlib.suppress(FileNotFoundError):
            self.state_path.unlink()
        if not self.keep_data:
            shutil.rmtree(self.root, ignore_errors=True)

    def stop_apiserver(self, grace: float = 3.0) -> None:
        """Stop kube-apiserver alone (etcd and controllers stay up) to simulate an API outage.

        Open watches hold a graceful shutdown for a long time, hence the short default grace before SIGKILL.
        """
        self._terminate("kube-apiserver", grace)
        self._save_state()

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start kube-apiserver again on the same port, against the same etcd."""
        if self._alive("kube-apiserver"):
            return
        deadline = time.monotonic() + timeout
        if not _port_is_free(self._ports.apiserver):
            # Freed by the old process a moment ago; the kernel may lag.
            self._wait(lambda: _port_is_free(self._ports.apiserver), "apiserver port release", deadline)
        self._launch("kube-apiserver", self._apiserver_argv())
        self._wait_apiserver(deadline)
        self._save_state()

    def restart_apiserver(self, timeout: float = 60.0, downtime: float = 0.0, grace: float = 3.0) -> None:
        """Stop and start kube-apiserver, keeping etcd (and so every object) and the controllers."""
        self.stop_apiserver(grace)
        if downtime > 0:
            time.sleep(downtime)
        self.start_apiserver(timeout)

    def running(self) -> bool:
        return any(self._alive(name) for name in self._procs)

    def ready(self) -> bool:
        return self._alive("kube-apiserver") and self._api_ok("/readyz")

    def apiserver_rss_bytes(self) -> int:
        """Resident memory of kube-apiserver, from /proc."""
        pid = self.pids().get("kube-apiserver")
        if pid is None:
            raise ControlPlaneError("kube-apiserver is not running")
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ControlPlaneError("VmRSS not found")

    @classmethod
    def attach(cls, data_dir: Path) -> ControlPlane:
        """A handle on a control plane started by another process from `data_dir` (for status and stop)."""
        data_dir = Path(data_dir).resolve()
        state_path = data_dir / "state.json"
        try:
            state = json.loads(state_path.read_text())
        except FileNotFoundError:
            raise ControlPlaneError(f"no control plane state in {data_dir}") from None
        cp = cls(
            data_dir=data_dir,
            authorization_mode=state["authorization_mode"],
            audit=state["audit"],
            controller_manager="kube-controller-manager" in state["pids"],
            keep_data=True,
        )
        cp._ports = Ports(**state["ports"])
        for name, info in state["pids"].items():
            pid: int | None = int(info["pid"])
            # Checked once here: a process that is exiting already has an empty cmdline but is not gone yet.
            if pid is not None and not proctree.runs(pid, info["argv"][0]):
                pid = None
            cp._procs[name] = _Proc(name=name, argv=info["argv"], log=Path(info["log"]), pid=pid)
        return cp

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """A raw authenticated API call as admin, for readiness checks and small scripts."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as resp:
            raw = resp.read()
            is_json = resp.headers.get_content_type() == "application/json"
        if not raw:
            return None
        # Health endpoints answer in plain text ("ok").
        return json.loads(raw) if is_json else raw.decode(errors="replace")

    # ----- internals ------------------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        if name == "etcd":
            etcd = self.etcd_binary or shutil.which("etcd")
            if etcd is None:
                raise ControlPlaneError(
                    "etcd not found; `make kube` installs it (Debian package etcd-server)"
                )
            return etcd
        return str((self.bin_dir or toolpaths.kube_bin_dir()) / name)

    def _prepare_credentials(self) -> None:
        ensure_pki(self.root / "pki")
        self._load_tokens()
        write_tokens(self.root / "tokens.csv", self._tokens, self.users)

    def _load_tokens(self) -> None:
        if not self._tokens:
            self._tokens = read_tokens(self.root / "tokens.csv")

    def _choose_ports(self) -> None:
        # etcd keeps its peer URL in its data; reuse the old ports with a kept data dir when still free.
        old: dict[str, int] = {}
        ports_file = self.root / "ports.json"
        if ports_file.exists():
            old = json.loads(ports_file.read_text())
        chosen: set[int] = set()
        values: dict[str, int] = {}
        for name in ("etcd_client", "etcd_peer", "apiserver"):
            port = old.get(name, 0)
            if not port or port in chosen or not _port_is_free(port):
                port = free_port()
                while port in chosen:
                    port = free_port()
            chosen.add(port)
            values[name] = port
        self._ports = Ports(**values)
        ports_file.write_text(json.dumps(values))

    def _etcd_argv(self) -> list[str]:
        return components.etcd_argv(self._bin("etcd"), self.root, self._ports)

    def _apiserver_argv(self) -> list[str]:
        audit_log = self.audit_log_path if self.audit else None
        return components.apiserver_argv(
            self._bin("kube-apiserver"), self.root, self._ports, self.authorization_mode, audit_log,
            self.extra_apiserver_args,
        )  # fmt: skip

    def _controller_manager_argv(self) -> list[str]:
        kubeconfig = self.root / "kubeconfig-controller-manager"
        return components.controller_manager_argv(
            self._bin("kube-controller-manager"), self.root, kubeconfig, self.extra_controller_manager_args
        )

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        write_kubeconfig(path, self.server_url, self.ca_path, user, self.token_for(user))

    def _launch(self, name: str, argv: list[str]) -> None:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
            out.flush()
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                # Own session: a Ctrl-C in the caller's terminal reaches the caller, which stops us in order.
                start_new_session=True,
                preexec_fn=proctree.die_with_parent if self.die_with_parent else None,
            )
        self._procs[name] = _Proc(name=name, argv=argv, log=log, popen=popen, pid=popen.pid)

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is None or proc.pid is None:
            return False
        if proc.popen is not None:
            return proc.popen.poll() is None
        return proctree.alive(proc.pid)

    def _terminate(self, name: str, grace: float) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.pid is None:
            return
        proctree.stop(proc.pid, grace, lambda: self._alive(name))
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        proc.pid = None
        proc.popen = None

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.pid is not None and not self._alive(name):
            log = self._procs[name].log
            raise ControlPlaneError(
                f"{name} exited during start-up; last lines of {log}:\n{proctree.tail(log, lines=25, missing='(no log)')}"
            )

    def _wait(self, probe: Callable[[], bool], what: str, deadline: float) -> None:
        while True:
            for name in self._procs:
                self._check_alive(name)
            if probe():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {p.log}:\n{proctree.tail(p.log, lines=10, missing='(no log)')}"
                    for p in self._procs.values()
                )
                raise ControlPlaneError(f"timed out waiting for {what}\n{logs}")
            time.sleep(0.2)

    def _wait_apiserver(self, deadline: float) -> None:
        self._wait(lambda: self._api_ok("/readyz"), "kube-apiserver /readyz", deadline)
        # The bootstrap controller creates `default` shortly after /readyz; clients expect it.
        self._wait(lambda: self._api_ok("/api/v1/namespaces/default"), "namespace default", deadline)

    def _ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))

    def _api_ok(self, path: str) -> bool:
        try:
            self.request("GET", path, timeout=2.0)
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return True

    @staticmethod
    def _http_ok(url: str) -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _save_state(self) -> None:
        state = {
            "authorization_mode": self.authorization_mode,
            "audit": self.audit,
            "server": self.server_url,
            "kubeconfig": str(self.kubeconfig_path),
            "ports": {
                "etcd_client": self._ports.etcd_client,
                "etcd_peer": self._ports.etcd_peer,
                "apiserver": self.port,
            },
            "pids": {
                name: {"pid": p.pid, "argv": p.argv, "log": str(p.log)}
                for name, p in self._procs.items()
                if p.pid is not None
            },
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.state_path)
