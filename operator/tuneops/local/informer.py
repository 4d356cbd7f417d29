"""Keeps a local cache of one collection of the API server (list, then watch), as client-go's informers do."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tuneops.kube.client import Kube, ResourceType

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class Informer:
    """Keeps an up-to-date cache of one collection (list, then watch; re-lists when the watch expires).

    `on_change` runs on the informer's thread after every change, with the changed object (or None after
    a re-list); keep it quick.
    """

    def __init__(
        self,
        api: Kube,
        rtype: ResourceType,
        on_change: Callable[[Obj | None], None] | None = None,
        name: str = "informer",
    ) -> None:
        self.api = api
        self.rtype = rtype
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
                listing = self.api.collection(self.rtype, None)
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
        for event in self.api.watch(self.rtype, None, version):
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
