"""A small thread-safe REST client for the local node: JSON in and out, list+watch, no typed models."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        try:
            detail = str(json.loads(body).get("message", body))
        except ValueError:
            detail = body
        super().__init__(f"{method} {path}: HTTP {status}: {detail[:400]}")


class KubeApi:
    """Requests against the API server named by a kubeconfig (token or client certificate auth)."""

    def __init__(self, kubeconfig: Path | str | None = None, user_agent: str = "tuneops-local-node") -> None:
        cfg = k8s_client.Configuration()
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None, client_configuration=cfg
        )
        self.base = str(cfg.host).rstrip("/")
        self.headers: dict[str, str] = {"Accept": "application/json", "User-Agent": user_agent}
        auth = cfg.auth_settings().get("BearerToken")
        if auth and auth.get("value"):
            self.headers["Authorization"] = str(auth["value"])
        pool_args: dict[str, Any] = {"num_pools": 4, "maxsize": 16}
        if self.base.startswith("https"):
            if cfg.verify_ssl:
                pool_args.update(cert_reqs="CERT_REQUIRED", ca_certs=cfg.ssl_ca_cert)
            else:
                pool_args["cert_reqs"] = "CERT_NONE"
            if cfg.cert_file:
                pool_args.update(cert_file=cfg.cert_file, key_file=cfg.key_file)
        self.pool = urllib3.PoolManager(**pool_args)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        headers = dict(self.headers)
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = self.pool.request(
            method,
            self.base + path,
            body=data,
            headers=headers,
            fields=dict(query) if query and method in ("GET", "DELETE") and data is None else None,
            timeout=urllib3.Timeout(connect=5.0, read=timeout),
            retries=False,
        )
        raw = resp.data
        if resp.status >= 400:
            raise ApiError(resp.status, method, path, raw.decode(errors="replace"))
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Obj | None:
        try:
            out: Obj = self.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return out

    def list(self, path: str, **query: str) -> Obj:
        out: Obj = self.request("GET", path, query=query)
        return out

    def create(self, path: str, body: Obj) -> Obj:
        out: Obj = self.request("POST", path, body)
        return out

    def merge_patch(self, path: str, body: Obj) -> Obj:
        out: Obj = self.request("PATCH", path, body, content_type="application/merge-patch+json")
        return out

    def strategic_patch(self, path: str, body: Obj) -> Obj:
        out: Obj = self.request("PATCH", path, body, content_type="application/strategic-merge-patch+json")
        return out

    def delete(self, path: str, body: Obj | None = None) -> bool:
        """True when deleted (or being deleted); False when it was already gone."""
        try:
            self.request("DELETE", path, body)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    def watch(self, path: str, resource_version: str, timeout_s: int = 60) -> Iterator[Obj]:
        """Watch events (type + object) from `resource_version` until the server ends the stream."""
        fields = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        resp = self.pool.request(
            "GET",
            self.base + path,
            fields=fields,
            headers=self.headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=5.0, read=timeout_s + 15),
            retries=False,
        )
        try:
            if resp.status >= 400:
                raise ApiError(resp.status, "WATCH", path, resp.read().decode(errors="replace"))
            buffer = b""
            for chunk in resp.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


class Informer:
    """Keeps an up-to-date cache of one collection (list, then watch; re-lists when the watch expires).

    `on_change` runs on the informer's thread after every change, with the changed object (or None after
    a re-list); keep it quick.
    """

    def __init__(
        self,
        api: KubeApi,
        path: str,
        on_change: Callable[[Obj | None], None] | None = None,
        name: str = "informer",
    ) -> None:
        self.api = api
        self.path = path
        self.on_change = on_change
        self.name = name
        self._items: dict[str, Obj] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def key(obj: Obj) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self._synced.wait(timeout)

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._items.values())

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._items.get(f"{namespace}/{name}")

    def _notify(self, obj: Obj | None) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(obj)
        except Exception:  # a failing callback must not end the watch
            log.exception("%s: change callback failed", self.name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.api.list(self.path)
                with self._lock:
                    self._items = {self.key(o): o for o in listing.get("items") or []}
                version = str((listing.get("metadata") or {}).get("resourceVersion", ""))
                self._synced.set()
                self._notify(None)
                while not self._stop.is_set():
                    version = self._watch_once(version)
            except _Expired:
                continue
            except Exception as exc:  # API restarts and network blips: back off and re-list
                if not self._stop.is_set():
                    log.debug("%s: watch error %s; re-listing", self.name, exc)
                    self._stop.wait(1.0)

    def _watch_once(self, version: str) -> str:
        for event in self.api.watch(self.path, version):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired
                raise RuntimeError(str(obj.get("message")))
            version = str((obj.get("metadata") or {}).get("resourceVersion", version))
            if kind == "BOOKMARK":
                continue
            with self._lock:
                if kind == "DELETED":
                    self._items.pop(self.key(obj), None)
                else:
                    self._items[self.key(obj)] = obj
            self._notify(obj)
            if self._stop.is_set():
                break
        return version


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""


def wait(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    """Poll `predicate` until true or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        time.sleep(interval)
    return False
