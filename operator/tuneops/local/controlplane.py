"""A real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on loopback."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import yaml

from tuneops import toolpaths

HOST = "127.0.0.1"
ADMIN_USER = "admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
MASTERS_GROUP = "system:masters"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers that need a cloud, nodes with pod CIDRs or a service proxy; without nodes they only log noise.
CONTROLLERS = "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route"
# ttlSecondsAfterFinished is alpha in 1.20; enabling it keeps the field instead of silently dropping it.
FEATURE_GATES = "TTLAfterFinished=true"
# Pods get no injected service-account token volume: the local node has no use for one, and the admission
# plugin would otherwise reject Pods created before the namespace's `default` ServiceAccount exists.
DISABLED_ADMISSION = "ServiceAccount"

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})

AuthorizationMode = Literal["AlwaysAllow", "RBAC"]

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    # One line per request: watches also log ResponseStarted, which AuditLog de-duplicates by auditID.
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _pid_alive(pid: int) -> bool:
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


def _pid_runs(pid: int, binary: str) -> bool:
    """Whether `pid` is still the process we started (guards against PID reuse after a reboot or crash)."""
    if not _pid_alive(pid):
        return False
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except OSError:
        return False
    return Path(argv0).name == Path(binary).name


def _set_parent_death_signal() -> None:
    """Runs in the child before exec: die with the process that started us (Linux only)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ControlPlaneError("openssl is required to create the control plane's keys; install it")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def binaries_missing(bin_dir: Path | None = None) -> list[str]:
    """Paths of required binaries that are absent; empty when the control plane can start."""
    bin_dir = bin_dir or toolpaths.kube_bin_dir()
    missing = [
        str(bin_dir / b) for b in ("kube-apiserver", "kube-controller-manager") if not (bin_dir / b).is_file()
    ]
    if shutil.which("etcd") is None:
        missing.append("etcd (Debian package etcd-server)")
    return missing


@dataclass(frozen=True)
class AuditEvent:
    """One API request as recorded by the apiserver's audit log (Metadata level)."""

    audit_id: str
    verb: str
    user: str
    groups: tuple[str, ...]
    resource: str
    subresource: str
    api_group: str
    namespace: str
    name: str
    code: int
    user_agent: str
    uri: str

    @property
    def is_write(self) -> bool:
        return self.verb in WRITE_VERBS

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> AuditEvent:
        ref = raw.get("objectRef") or {}
        user = raw.get("user") or {}
        status = raw.get("responseStatus") or {}
        return cls(
            audit_id=str(raw.get("auditID", "")),
            verb=str(raw.get("verb", "")),
            user=str(user.get("username", "")),
            groups=tuple(user.get("groups") or ()),
            resource=str(ref.get("resource", "")),
            subresource=str(ref.get("subresource", "")),
            api_group=str(ref.get("apiGroup", "")),
            namespace=str(ref.get("namespace", "")),
            name=str(ref.get("name", "")),
            code=int(status.get("code", 0)),
            user_agent=str(raw.get("userAgent", "")),
            uri=str(raw.get("requestURI", "")),
        )


@dataclass
class AuditLog:
    """Reads the apiserver's JSON-lines audit log; `mark()` and `since=` scope a count to a time window."""

    path: Path

    def mark(self) -> int:
        """An offset into the log: events after this call are those with `since=` this value."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def events(self, since: int = 0) -> list[AuditEvent]:
        """Each request once (watches log twice: when the stream starts and when it ends)."""
        seen: set[str] = set()
        out: list[AuditEvent] = []
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return out
        for line in data.splitlines():
            # The apiserver may be mid-write on the last line.
            try:
                raw = json.loads(line)
            except ValueError:
                continue
            event = AuditEvent.from_json(raw)
            if event.audit_id in seen:
                continue
            seen.add(event.audit_id)
            out.append(event)
        return out

    def select(
        self,
        since: int = 0,
        *,
        verbs: Iterable[str] | None = None,
        resource: str | None = None,
        user: str | None = None,
        namespace: str | None = None,
        writes_only: bool = False,
    ) -> list[AuditEvent]:
        verb_set = frozenset(verbs) if verbs is not None else None
        return [
            e
            for e in self.events(since)
            if (verb_set is None or e.verb in verb_set)
            and (resource is None or e.resource == resource)
            and (user is None or e.user == user)
            and (namespace is None or e.namespace == namespace)
            and (not writes_only or e.is_write)
        ]

    def count(
        self,
        since: int = 0,
        *,
        by: Sequence[str] = ("verb", "resource"),
        verbs: Iterable[str] | None = None,
        resource: str | None = None,
        user: str | None = None,
        namespace: str | None = None,
        writes_only: bool = False,
    ) -> Counter[tuple[str, ...]]:
        """Requests grouped by the named AuditEvent fields, e.g. `by=("user", "verb", "resource")`."""
        selected = self.select(
            since, verbs=verbs, resource=resource, user=user, namespace=namespace, writes_only=writes_only
        )
        return Counter(tuple(str(getattr(e, key)) for key in by) for e in selected)


@dataclass
class _Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None
    pid: int | None = None


@dataclass
class _Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0


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

    _ports: _Ports = field(default_factory=_Ports, init=False, repr=False)
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
        self.data_dir = Path(self.data_dir).resolve()
        if self.keep_data is None:
            self.keep_data = not self._temporary

    # ----- paths and connection details -------------------------------------------------------------

    @property
    def root(self) -> Path:
        assert self.data_dir is not None  # set in __post_init__
        return self.data_dir

    @property
    def kubeconfig_path(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def ca_path(self) -> Path:
        return self.root / "pki" / "ca.crt"

    @property
    def audit_log_path(self) -> Path:
        return self.root / "audit.log"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

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
        return f"http://{HOST}:{self._ports.etcd_client}"

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
        path = self.kubeconfig_path if user == ADMIN_USER else self.root / f"kubeconfig-{_safe(user)}"
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
                self._write_kubeconfig(self.root / "kubeconfig-controller-manager", CONTROLLER_MANAGER_USER)
                self._launch("kube-controller-manager", self._controller_manager_argv())
                # The service-account controller creating `default/default` shows the controllers are running.
                self._wait(
                    lambda: self._api_ok("/api/v1/namespaces/default/serviceaccounts/default"),
                    "kube-controller-manager",
                    deadline,
                )
            self._save_state()
        except BaseException:
            self.stop()
            raise

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
        cp._ports = _Ports(**state["ports"])
        for name, info in state["pids"].items():
            pid: int | None = int(info["pid"])
            # Checked once here: a process that is exiting already has an empty cmdline but is not gone yet.
            if pid is not None and not _pid_runs(pid, info["argv"][0]):
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
        pki = self.root / "pki"
        if not (pki / "ca.crt").exists():
            _openssl(
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                "-days", "3650", "-subj", "/CN=tuneops-local-ca", cwd=pki,
            )  # fmt: skip
        if not (pki / "apiserver.crt").exists():
            ext = pki / "apiserver.ext"
            ext.write_text(
                "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
                "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
                "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
            )
            _openssl(
                "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
                "-subj", "/CN=kube-apiserver", cwd=pki,
            )  # fmt: skip
            _openssl(
                "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext", cwd=pki,
            )  # fmt: skip
        if not (pki / "sa.key").exists():
            _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
            _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
        for key in pki.glob("*.key"):
            key.chmod(0o600)

        self._load_tokens()
        wanted = {ADMIN_USER: [MASTERS_GROUP], CONTROLLER_MANAGER_USER: [MASTERS_GROUP]}
        wanted.update({u: list(g) for u, g in self.users.items()})
        for user in wanted:
            self._tokens.setdefault(user, secrets.token_hex(24))
        # Format: token,user,uid,"group1,group2"
        lines = [f'{self._tokens[u]},{u},{u},"{",".join(g)}"' for u, g in wanted.items()]
        tokens = self.root / "tokens.csv"
        tokens.write_text("\n".join(lines) + "\n")
        tokens.chmod(0o600)

    def _load_tokens(self) -> None:
        if self._tokens:
            return
        tokens = self.root / "tokens.csv"
        if tokens.exists():
            for line in tokens.read_text().splitlines():
                parts = line.split(",", 3)
                if len(parts) >= 2:
                    self._tokens[parts[1]] = parts[0]

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
        self._ports = _Ports(**values)
        ports_file.write_text(json.dumps(values))

    def _etcd_argv(self) -> list[str]:
        client, peer = f"http://{HOST}:{self._ports.etcd_client}", f"http://{HOST}:{self._ports.etcd_peer}"
        return [
            self._bin("etcd"),
            "--name=tuneops",
            f"--data-dir={self.root / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=tuneops={peer}",
            "--initial-cluster-state=new",
            "--logger=zap",
            "--log-level=warn",
            # Keep the database small and bounded over long `tuneops local` sessions.
            "--auto-compaction-mode=revision",
            "--auto-compaction-retention=1000",
            "--snapshot-count=10000",
        ]

    def _apiserver_argv(self) -> list[str]:
        pki = self.root / "pki"
        argv = [
            self._bin("kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={HOST}",
            f"--secure-port={self._ports.apiserver}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.root / 'tokens.csv'}",
            f"--authorization-mode={self.authorization_mode}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--disable-admission-plugins={DISABLED_ADMISSION}",
            f"--feature-gates={FEATURE_GATES}",
            "--allow-privileged=true",
            "--profiling=false",
            "--anonymous-auth=false",
            "--logtostderr=true",
            "--v=0",
        ]
        if self.audit:
            policy = self.root / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
            argv += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log_path}",
                "--audit-log-format=json",
                # Blocking: an event is in the file before the response returns, so counts are exact.
                "--audit-log-mode=blocking",
                "--audit-log-maxsize=0",
            ]
        return argv + list(self.extra_apiserver_args)

    def _controller_manager_argv(self) -> list[str]:
        pki = self.root / "pki"
        kubeconfig = self.root / "kubeconfig-controller-manager"
        return [
            self._bin("kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--controllers={CONTROLLERS}",
            f"--feature-gates={FEATURE_GATES}",
            "--leader-elect=false",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            # Lets the CSR signer work, so certificate requests behave as on a real cluster.
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # No serving ports: nothing scrapes them here, and fixed defaults would collide between instances.
            "--port=0",
            "--secure-port=0",
            "--logtostderr=true",
            "--v=0",
            *self.extra_controller_manager_args,
        ]

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        ca = base64.b64encode(self.ca_path.read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "tuneops-local",
                    "cluster": {"server": self.server_url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": user, "user": {"token": self.token_for(user)}}],
            "contexts": [{"name": "tuneops-local", "context": {"cluster": "tuneops-local", "user": user}}],
            "current-context": "tuneops-local",
            "preferences": {},
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        tmp.chmod(0o600)
        tmp.replace(path)

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
                preexec_fn=_set_parent_death_signal if self.die_with_parent else None,
            )
        self._procs[name] = _Proc(name=name, argv=argv, log=log, popen=popen, pid=popen.pid)

    def _alive(self, name: str) -> bool:
        proc = self._procs.get(name)
        if proc is None or proc.pid is None:
            return False
        if proc.popen is not None:
            return proc.popen.poll() is None
        return _pid_alive(proc.pid)

    def _terminate(self, name: str, grace: float) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.pid is None:
            return
        if self._alive(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while time.monotonic() < end and self._alive(name):
                time.sleep(0.05)
            if self._alive(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        if proc.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=5)
        proc.pid = None
        proc.popen = None

    def _check_alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None and proc.pid is not None and not self._alive(name):
            log = self._procs[name].log
            raise ControlPlaneError(f"{name} exited during start-up; last lines of {log}:\n{_tail(log)}")

    def _wait(self, probe: Callable[[], bool], what: str, deadline: float) -> None:
        while True:
            for name in self._procs:
                self._check_alive(name)
            if probe():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.log}:\n{_tail(p.log, 10)}" for p in self._procs.values())
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


def _safe(user: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
