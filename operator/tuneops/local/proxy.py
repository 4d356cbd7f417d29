"""A tiny Service proxy for the local node: 127.0.0.1:<port> per Service port, TCP to ready Pods, round robin."""

from __future__ import annotations

import contextlib
import json
import logging
import selectors
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops.kube.client import SERVICE
from tuneops.kube.informer import Informer, Obj
from tuneops.local.node import LocalNode

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@dataclass
class _Listener:
    key: str  # namespace/name/port
    namespace: str
    service: str
    port_spec: Obj
    sock: socket.socket
    selector: dict[str, str]
    next: int = 0
    thread: threading.Thread | None = None
    closed: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])


class ServiceProxy:
    """Listens for every Service with a selector and forwards each connection to one ready endpoint Pod.

    Ports are remembered in `<root>/services.json` and reused across restarts when still free, so an
    endpoint URL printed once keeps working.
    """

    def __init__(self, node: LocalNode) -> None:
        self.node = node
        self.state_path = node.config.root / "services.json"
        self._listeners: dict[str, _Listener] = {}
        self._lock = threading.Lock()
        self._remembered: dict[str, int] = self._load()
        self.services = Informer(node.api, SERVICE, lambda _: self._sync(), name="services")

    def _load(self) -> dict[str, int]:
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): int(v["port"]) for k, v in raw.items() if isinstance(v, dict) and "port" in v}

    def start(self) -> None:
        self.services.start()
        self.services.wait_synced(30.0)
        self._sync()

    def stop(self) -> None:
        self.services.stop()
        with self._lock:
            for lst in self._listeners.values():
                self._close(lst)
            self._listeners.clear()

    def endpoints(self) -> dict[str, str]:
        """namespace/service/port -> http://127.0.0.1:<local port>."""
        with self._lock:
            return {k: f"http://{HOST}:{lst.port}" for k, lst in self._listeners.items()}

    def url(self, namespace: str, service: str, port: int | None = None) -> str | None:
        for key, value in sorted(self.endpoints().items()):
            ns, name, p = key.split("/")
            if ns == namespace and name == service and (port is None or int(p) == port):
                return value
        return None

    # ----- listeners ----------------------------------------------------------------------------------

    def _sync(self) -> None:
        wanted: dict[str, tuple[Obj, Obj]] = {}
        for svc in self.services.items():
            spec = svc.get("spec") or {}
            if not spec.get("selector"):
                continue
            meta = svc["metadata"]
            for port in spec.get("ports") or []:
                if str(port.get("protocol") or "TCP") != "TCP":
                    continue
                wanted[f"{meta['namespace']}/{meta['name']}/{port['port']}"] = (svc, port)
        with self._lock:
            for key in list(self._listeners):
                if key not in wanted:
                    self._close(self._listeners.pop(key))
            for key, (svc, port) in wanted.items():
                lst = self._listeners.get(key)
                if lst is not None:
                    lst.selector = dict(svc["spec"]["selector"])
                    lst.port_spec = port
                    continue
                try:
                    self._listeners[key] = self._open(key, svc, port)
                except OSError as err:
                    log.warning("service proxy: cannot listen for %s: %s", key, err)
            self._save()

    def _open(self, key: str, svc: Obj, port: Obj) -> _Listener:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, self._remembered.get(key, 0)))
        except OSError:
            sock.bind((HOST, 0))
        sock.listen(64)
        meta = svc["metadata"]
        lst = _Listener(
            key, str(meta["namespace"]), str(meta["name"]), port, sock, dict(svc["spec"]["selector"])
        )
        lst.thread = threading.Thread(target=self._accept_loop, args=(lst,), name=f"svc-{key}", daemon=True)
        lst.thread.start()
        self._remembered[key] = lst.port
        log.info("service %s reachable at http://%s:%d", key, HOST, lst.port)
        return lst

    def _close(self, lst: _Listener) -> None:
        lst.closed.set()
        with contextlib.suppress(OSError):
            lst.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            lst.sock.close()

    def _save(self) -> None:
        data = {
            k: {
                "namespace": v.namespace,
                "service": v.service,
                "port": v.port,
                "servicePort": v.port_spec["port"],
            }
            for k, v in self._listeners.items()
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(self.state_path)

    # ----- forwarding ---------------------------------------------------------------------------------

    def _backends(self, lst: _Listener) -> list[tuple[str, int]]:
        target: Any = lst.port_spec.get("targetPort", lst.port_spec["port"])
        out = []
        for w in sorted(self.node.workers(), key=lambda w: w.name):
            if w.namespace != lst.namespace or not w.ready or w.stopping.is_set():
                continue
            labels = dict(((w.pod.get("metadata") or {}).get("labels")) or {})
            if not _matches(lst.selector, labels) or (w.pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if isinstance(target, int) or str(target).isdigit():
                out.append((w.ip, int(target)))
            elif str(target) in w.container_ports():
                out.append((w.ip, w.container_ports()[str(target)]))
        return out

    def _accept_loop(self, lst: _Listener) -> None:
        while not lst.closed.is_set():
            try:
                conn, _ = lst.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._forward, args=(lst, conn), daemon=True).start()

    def _forward(self, lst: _Listener, client: socket.socket) -> None:
        backends = self._backends(lst)
        upstream: socket.socket | None = None
        for _ in range(len(backends)):
            host, port = backends[lst.next % len(backends)]
            lst.next += 1
            try:
                upstream = socket.create_connection((host, port), timeout=5)
                break
            except OSError:
                continue
        if upstream is None:
            with contextlib.suppress(OSError):
                client.close()
            return
        upstream.settimeout(None)
        _pump(client, upstream)


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides are done (half-closes are passed on)."""
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    open_sides = 2
    try:
        while open_sides:
            for key, _ in sel.select(timeout=600):
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                dst: socket.socket = key.data
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if data:
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
                    continue
                sel.unregister(src)
                open_sides -= 1
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
            else:
                if not sel.get_map():
                    return
    finally:
        sel.close()
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.close()


def read_endpoints(root: Path) -> dict[str, str]:
    """The proxy's endpoints as another process sees them (from services.json)."""
    try:
        raw = json.loads((root / "services.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: f"http://{HOST}:{v['port']}" for k, v in raw.items()}
