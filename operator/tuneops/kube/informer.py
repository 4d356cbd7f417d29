"""A local copy of one collection of the API server (list, then watch), as client-go's informers keep.

The operator keeps one per kind it reads (the three tuneops kinds, and the children it makes, selected by
its label); the local node keeps them for Pods, Nodes and Services. Reads come from the copy; every change
is handed to a callback, which is how a child's change wakes its owner.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tuneops.kube.client import ApiError, Kube, ResourceType

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

# Not allowed (RBAC): listed again this often (reads then go to the server). A kind not served (its CRD is not
# installed) is listed again only when poked (`rediscover`: the operator wrote one successfully), so an
# operator on a cluster without LeaderWorkerSet, KEDA or the Gateway API makes no reads for them.
REDISCOVER_S = 300.0


def slim(obj: Obj) -> Obj:
    """What the store keeps of an object: all but metadata.managedFields (server-side apply's bookkeeping,
    often the largest part of an object, read by no reconcile)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        meta.pop("managedFields")
    return obj


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def resource_version(obj: Mapping[str, Any]) -> int | None:
    """The object's resourceVersion as a number, where the server gives one (etcd revisions are)."""
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(str(raw))
    except ValueError:
        return None


def matches(obj: Mapping[str, Any], selector: Mapping[str, str] | None) -> bool:
    if not selector:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in selector.items())


class Store:
    """Objects by (namespace, name), with an index on a few label keys so that a list by selector does not
    look at every object. Thread-safe; objects handed out must not be mutated by the reader."""

    def __init__(self, index_keys: Iterable[str] = ()) -> None:
        self.index_keys = tuple(index_keys)
        self._items: dict[Key, Obj] = {}
        self._by_ns: dict[str, dict[str, Obj]] = {}
        self._index: dict[tuple[str, str], set[Key]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def replace(self, items: Iterable[Obj]) -> None:
        with self._lock:
            self._items, self._by_ns, self._index = {}, {}, {}
            for obj in items:
                self._put(obj)

    def upsert(self, obj: Obj, newer_only: bool = True) -> bool:
        """Store `obj` unless the copy held is newer (a watch event can trail a write's answer). True if
        stored."""
        with self._lock:
            held = self._items.get(key_of(obj))
            if newer_only and held is not None:
                mine, theirs = resource_version(obj), resource_version(held)
                if mine is not None and theirs is not None and mine < theirs:
                    return False
            self._drop(key_of(obj))
            self._put(obj)
            return True

    def delete(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._drop((namespace, name))

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._items.get((namespace, name))

    def list(self, namespace: str | None = None, selector: Mapping[str, str] | None = None) -> list[Obj]:
        with self._lock:
            indexed = next((k for k in self.index_keys if selector and k in selector), None)
            if indexed is not None and selector is not None:
                keys = self._index.get((indexed, selector[indexed]), set())
                candidates: Iterable[Obj] = [self._items[k] for k in keys]
            elif namespace is None:
                candidates = self._items.values()
            else:
                candidates = self._by_ns.get(namespace, {}).values()
            return sorted(
                (
                    o
                    for o in candidates
                    if (namespace is None or key_of(o)[0] == namespace) and matches(o, selector)
                ),
                key=key_of,
            )

    def _put(self, obj: Obj) -> None:
        key = key_of(obj)
        self._items[key] = obj
        self._by_ns.setdefault(key[0], {})[key[1]] = obj
        have = (obj.get("metadata") or {}).get("labels") or {}
        for label in self.index_keys:
            if label in have:
                self._index.setdefault((label, str(have[label])), set()).add(key)

    def _drop(self, key: Key) -> Obj | None:
        obj = self._items.pop(key, None)
        if obj is None:
            return None
        bucket = self._by_ns.get(key[0])
        if bucket is not None:
            bucket.pop(key[1], None)
            if not bucket:
                del self._by_ns[key[0]]
        have = (obj.get("metadata") or {}).get("labels") or {}
        for label in self.index_keys:
            if label in have:
                entry = self._index.get((label, str(have[label])))
                if entry is not None:
                    entry.discard(key)
                    if not entry:
                        del self._index[(label, str(have[label]))]
        return obj


# What a change callback gets: the event type (ADDED, MODIFIED, DELETED; SYNCED after a (re-)list, with no
# object), the object, and the copy held before (None when new).
Handler = Callable[[str, Obj | None, Obj | None], None]


class Informer:
    """Keeps a Store of one collection up to date (list, then watch; lists again when the watch expires).

    `namespace` None watches every namespace; `selector` restricts it by labels. A kind the server does not
    serve (404) or that this client may not list (403) leaves the informer `served` False; it lists again when
    poked (`rediscover`), or after REDISCOVER_S when refused. `on_change` (legacy form: one argument, the object or None after a list) or
    `on_event` run on the informer's thread; keep them quick.
    """

    def __init__(
        self,
        api: Kube,
        rtype: ResourceType,
        on_change: Callable[[Obj | None], None] | None = None,
        name: str = "informer",
        *,
        namespace: str | None = None,
        selector: Mapping[str, str] | None = None,
        index_keys: Iterable[str] = (),
        on_event: Handler | None = None,
        watch_timeout_s: int = 300,
    ) -> None:
        self.api = api
        self.rtype = rtype
        self.on_change = on_change
        self.on_event = on_event
        self.name = name
        self.namespace = namespace
        self.selector = dict(selector or {})
        self.store = Store(index_keys)
        self.watch_timeout_s = watch_timeout_s
        self.served = False
        self.refused: int | None = None  # the HTTP status of a refused list (403, 404), while refused
        self.lists = 0
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._poke = threading.Event()
        self._thread: threading.Thread | None = None

    def rediscover(self) -> None:
        """List again now if the kind was not served (its CRD may just have been installed)."""
        if self.refused == 404:
            self._poke.set()

    @staticmethod
    def key(obj: Obj) -> str:
        namespace, name = key_of(obj)
        return f"{namespace}/{name}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self._synced.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def items(self) -> list[Obj]:
        return self.store.list()

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.store.get(namespace, name)

    def _notify(self, kind: str, obj: Obj | None, before: Obj | None) -> None:
        try:
            if self.on_event is not None:
                self.on_event(kind, obj, before)
            if self.on_change is not None:
                self.on_change(obj if kind != "SYNCED" else None)
        except Exception:  # a failing callback must not end the watch
            log.exception("%s: change callback failed", self.name)

    def _list(self) -> str | None:
        """List the collection into the store; the resourceVersion to watch from, or None if refused."""
        try:
            listing = self.api.collection(self.rtype, self.namespace, self.selector or None)
        except ApiError as exc:
            if exc.status not in (403, 404):
                raise
            if self.refused != exc.status:
                log.info("%s: %s %s (HTTP %d)", self.name, self.rtype.kind,
                         "not served" if exc.status == 404 else "not allowed", exc.status)  # fmt: skip
            self.refused, self.served = exc.status, False
            self.store.replace(())
            self._synced.set()
            return None
        self.lists += 1
        items = listing.get("items") or []
        for item in items:
            item.setdefault("apiVersion", self.rtype.api_version)
            item.setdefault("kind", self.rtype.kind)
            slim(item)
        self.store.replace(items)
        self.refused, self.served = None, True
        self._synced.set()
        self._notify("SYNCED", None, None)
        return str((listing.get("metadata") or {}).get("resourceVersion", ""))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version = self._list()
                if version is None:
                    self._poke.wait(None if self.refused == 404 else REDISCOVER_S)
                    self._poke.clear()
                    continue
                while not self._stop.is_set():
                    version = self._watch_once(version)
            except _Expired:
                continue
            except Exception as exc:  # API restarts and network blips: back off and list again
                if not self._stop.is_set():
                    log.debug("%s: watch error %s; listing again", self.name, exc)
                    self._stop.wait(1.0)

    def _watch_once(self, version: str) -> str:
        query = self.selector or None
        for event in self.api.watch(
            self.rtype, self.namespace, version, self.watch_timeout_s, selector=query
        ):
            kind = str(event.get("type"))
            obj = event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise _Expired
                raise RuntimeError(str(obj.get("message")))
            version = str((obj.get("metadata") or {}).get("resourceVersion", version))
            if kind == "BOOKMARK":
                continue
            obj.setdefault("apiVersion", self.rtype.api_version)
            obj.setdefault("kind", self.rtype.kind)
            slim(obj)
            before = self.store.get(*key_of(obj))
            if kind == "DELETED":
                self.store.delete(*key_of(obj))
            else:
                self.store.upsert(obj)
            self._notify(kind, obj, before)
            if self._stop.is_set():
                break
        return version


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""
