"""A local copy of one collection of the API server (list, then watch), as client-go's informers keep.

The operator keeps one per kind it reads (the three tuneops kinds, and the children it makes, selected by
its label); the local node keeps them for Pods, Nodes and Services. Reads come from the copy; every change
is handed to a callback, which is how a child's change wakes its owner.

What the copy holds is bounded by what the operator trusts and reads, not by what tenants write:
  - `keep` (set by the operator's cache on child informers) drops objects whose controller is not one of the
    operator's own (a label is anyone's to set);
  - `project` (set by the operator's cache as the informers' `projection`) keeps only the fields the
    reconcilers read (PROJECTIONS, per kind); other users (the local node) keep whole objects;
  - lists are read in pages (`page_size`, smaller for kinds that carry data).

Resource versions are opaque: they are compared for equality only (same uid and resourceVersion: the same
object), never ordered. Readers get copies: mutating what `get` or `items` returned changes nothing held.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from tuneops.backoff import Backoff
from tuneops.kube.client import ApiError, Kube, ResourceType, _selector

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

# Not allowed (RBAC): listed again this often (reads then go to the server). A kind not served (its CRD is not
# installed) is listed again only when poked (`rediscover`: the operator wrote one successfully), so an
# operator on a cluster without LeaderWorkerSet, KEDA or the Gateway API makes no reads for them.
REDISCOVER_S = 300.0
# Watch errors: listed again after a growing, jittered wait (0.5 s, 1 s, 2 s ... 30 s); a watch that ran this
# long before it broke starts the count again.
WATCH_BACKOFF_BASE_S = 0.5
WATCH_BACKOFF_CAP_S = 30.0
WATCH_HEALTHY_S = 30.0
# Objects per page of a list; kinds whose objects may carry up to 1 MiB of data get small pages, so a list of
# many large objects never sits in memory at once.
PAGE_SIZE = 200
PAGE_SIZES = {"ConfigMap": 10, "Secret": 10}
# A write of ours answered with a version the watch has not brought yet: events before it in the stream are
# older, and do not replace it. Forgotten after this long whatever happens (a no-op write brings no event).
PENDING_WRITE_S = 60.0
# Versions remembered per key (the watch's last few), to tell a late write answer from a new version.
SEEN_VERSIONS = 4
# Children whose controller was not known when seen, remembered (key only) so that they are read again when
# it appears; at most this many.
MAX_ORPHANS = 10_000
# How long an informer of children waits for its owners' informers to list before it lists anyway (owners kopf
# feeds are listed only once there is one; children seen before their owner are read again when it comes, one
# GET each). An owner informer whose listing has begun is waited for until it ends, up to DEPENDS_LISTING_WAIT_S:
# on a restart with thousands of resources, listing the children first cost a GET per child (2,881 in the
# scale benchmark's workload B).
DEPENDS_WAIT_S = 10.0
DEPENDS_LISTING_WAIT_S = 120.0
# ConfigMap data kept up to this size (the operator's own are small); larger data is replaced by its size.
MAX_DATA_BYTES = 64 * 1024


def slim(obj: Obj) -> Obj:
    """What the store keeps of any object: all but metadata.managedFields (server-side apply's bookkeeping,
    often the largest part of an object, read by no reconcile)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        meta.pop("managedFields")
    return obj


def _pick(obj: Mapping[str, Any], keys: Iterable[str]) -> Obj:
    return {k: obj[k] for k in keys if k in obj}


# A Pod: what the reconcilers and adapters read: metadata, status, the spec fields `job_pod` compares with its
# Job's template (containers, initContainers, volumes, serviceAccountName), where it runs, and its readiness
# gates (the adapters gate, tuneops.adapters.gate).
POD_SPEC_KEYS = ("containers", "initContainers", "volumes", "serviceAccountName", "serviceAccount", "nodeName",
                 "restartPolicy", "hostNetwork", "hostPID", "hostIPC", "readinessGates")  # fmt: skip


def project_pod(obj: Obj) -> Obj:
    out = _pick(obj, ("apiVersion", "kind", "metadata", "status"))
    out["spec"] = _pick(obj.get("spec") or {}, POD_SPEC_KEYS)
    return out


def project_configmap(obj: Obj) -> Obj:
    """Metadata; the data only while small (the operator's own ConfigMaps are: drift compares them), else its
    size alone, which differs from anything the operator would write."""
    out = _pick(obj, ("apiVersion", "kind", "metadata", "immutable"))
    for field in ("data", "binaryData"):
        data = obj.get(field)
        if not isinstance(data, dict):
            continue
        size = sum(len(str(k)) + len(str(v)) for k, v in data.items())
        out[field] = data if size <= MAX_DATA_BYTES else {"tuneops.io/dropped-bytes": str(size)}
    return out


# Per kind, what the store keeps (after `slim`); kinds not listed are kept whole: their spec is what the
# operator applied (drift compares it) and their status is read.
PROJECTIONS: dict[str, Callable[[Obj], Obj]] = {"Pod": project_pod, "ConfigMap": project_configmap}


def project(obj: Obj) -> Obj:
    slim(obj)
    how = PROJECTIONS.get(str(obj.get("kind")))
    return how(obj) if how is not None else obj


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def version_of(obj: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(uid, resourceVersion): equal for two copies of the same version of one object. Opaque: never ordered."""
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return str(meta.get("uid") or ""), str(meta.get("resourceVersion") or "")


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return str(ref.get("uid") or "") or None
    return None


def matches(obj: Mapping[str, Any], selector: Mapping[str, str] | None) -> bool:
    if not selector:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in selector.items())


def copy_of(value: Any) -> Any:
    """A deep copy of JSON data (dicts, lists, scalars): what readers get, so the store stays as the server
    sent it."""
    if isinstance(value, dict):
        return {k: copy_of(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_of(v) for v in value]
    return value


class Store:
    """Objects by (namespace, name), with an index on a few label keys so that a list by selector does not
    look at every object, and the uids held. Thread-safe; `get` and `list` hand out copies."""

    def __init__(self, index_keys: Iterable[str] = ()) -> None:
        self.index_keys = tuple(index_keys)
        self._items: dict[Key, Obj] = {}
        self._by_ns: dict[str, dict[str, Obj]] = {}
        self._index: dict[tuple[str, str], set[Key]] = {}
        self._uids: dict[str, Key] = {}
        # Writes of ours whose watch event has not come yet: key -> ((uid, resourceVersion), when).
        self._pending: dict[Key, tuple[tuple[str, str], float]] = {}
        # The last versions the watch (or a list) brought for each key: a write's answer whose version is among
        # them is older than what is held, however its events and the answer interleaved.
        self._seen: dict[Key, collections.deque[tuple[str, str] | None]] = {}
        self._lock = threading.Lock()
        # Called (outside the lock) with each uid the store did not hold before: owners arriving.
        self.on_new_uid: Callable[[str], None] | None = None
        self._arrived: list[str] = []

    def _announce(self) -> None:
        with self._lock:
            arrived, self._arrived = self._arrived, []
        if self.on_new_uid is not None:
            for uid in arrived:
                self.on_new_uid(uid)

    def __len__(self) -> int:
        return len(self._items)

    def replace(self, items: Iterable[Obj]) -> None:
        with self._lock:
            held = set(self._uids)
            self._items, self._by_ns, self._index, self._uids, self._pending = {}, {}, {}, {}, {}
            self._seen = {}
            for obj in items:
                self._put(obj)
                self._saw(key_of(obj), version_of(obj))
            self._arrived = [u for u in self._uids if u not in held] if self.on_new_uid is not None else []
        self._announce()

    def upsert(self, obj: Obj, newer_only: bool = True) -> bool:
        """Store `obj` (held as given: the caller hands it over). With `newer_only`, not when a write of ours
        is pending on the key and `obj` is another version of the same object: the watch brings events in
        order, so one that comes before our write's is older. True if stored (the same version held already
        counts as stored: the caller's event is not older than what is held)."""
        stored, held = self.offer(obj, newer_only)
        return stored or version_of(held) == version_of(obj)

    def offer(self, obj: Obj, newer_only: bool = True) -> tuple[bool, Obj | None]:
        """As `upsert`; also False when the very same version is held already. Returns (stored, the copy held
        before)."""
        key, version = key_of(obj), version_of(obj)
        with self._lock:
            self._saw(key, version)
            held = self._items.get(key)
            pending = self._pending.get(key)
            if pending is not None and (
                pending[0] == version or time.monotonic() - pending[1] > PENDING_WRITE_S
            ):
                del self._pending[key]  # the watch caught up with our write
                pending = None
            if held is not None and version_of(held) == version:
                return False, held
            if newer_only and pending is not None and version is not None and pending[0][0] == version[0]:
                return False, held  # an event from before our write
            self._drop(key)
            self._put(obj)
        self._announce()
        return True, held

    def written(self, obj: Obj) -> tuple[bool, Obj | None]:
        """A write's answer, newer than anything the watch has brought for its key: stored and remembered until
        the watch brings the same version."""
        key, version = key_of(obj), version_of(obj)
        with self._lock:
            held = self._items.get(key)
            if held is not None and version_of(held) == version:
                return False, held  # a write that changed nothing, or the watch came first
            if version is not None and version in self._seen.get(key, ()):
                # The watch brought this version already, and perhaps newer ones since (a controller's status
                # write right after ours): what is held is not older than the answer.
                return False, held
            if version is not None and version[1]:
                self._pending[key] = (version, time.monotonic())
            self._drop(key)
            self._put(obj)
        self._announce()
        return True, held

    def _saw(self, key: Key, version: tuple[str, str] | None) -> None:
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = collections.deque(maxlen=SEEN_VERSIONS)
        seen.append(version)

    def delete(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            self._pending.pop((namespace, name), None)
            self._seen.pop((namespace, name), None)
            return self._drop((namespace, name))

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            found = self._items.get((namespace, name))
            return None if found is None else copy_of(found)

    def peek(self, namespace: str, name: str) -> Obj | None:
        """The object held itself, not a copy: for this package's own reads, which never change it."""
        with self._lock:
            return self._items.get((namespace, name))

    def has_uid(self, uid: str | None) -> bool:
        with self._lock:
            return bool(uid) and uid in self._uids

    def held_keys(self) -> list[Key]:
        with self._lock:
            return sorted(self._items)

    def snapshot(self) -> dict[Key, Obj]:
        """The objects held themselves (not copies), by key: for this package's comparisons."""
        with self._lock:
            return dict(self._items)

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
            found = [
                o
                for o in candidates
                if (namespace is None or key_of(o)[0] == namespace) and matches(o, selector)
            ]
            return [copy_of(o) for o in sorted(found, key=key_of)]

    def _put(self, obj: Obj) -> None:
        key = key_of(obj)
        self._items[key] = obj
        self._by_ns.setdefault(key[0], {})[key[1]] = obj
        uid = (obj.get("metadata") or {}).get("uid")
        if uid:
            if self.on_new_uid is not None and str(uid) not in self._uids:
                self._arrived.append(str(uid))
            self._uids[str(uid)] = key
        have = (obj.get("metadata") or {}).get("labels") or {}
        for label in self.index_keys:
            if label in have:
                self._index.setdefault((label, str(have[label])), set()).add(key)

    def _drop(self, key: Key) -> Obj | None:
        obj = self._items.pop(key, None)
        if obj is None:
            return None
        uid = (obj.get("metadata") or {}).get("uid")
        if uid and self._uids.get(str(uid)) == key:
            del self._uids[str(uid)]
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


# What a change callback gets: the event type (ADDED, MODIFIED, DELETED; SYNCED after the first list, with no
# object), the object, and the copy held before (None when new). The objects are the store's own: read them,
# never change them.
Handler = Callable[[str, Obj | None, Obj | None], None]


class Informer:
    """Keeps a Store of one collection up to date (list in pages, then watch; lists again when the watch
    expires or fails, after a jittered backoff).

    `namespace` None watches every namespace; `selector` restricts it by labels. A kind the server does not
    serve (404) or that this client may not list (403) leaves the informer `served` False; it lists again when
    poked (`rediscover`), or after REDISCOVER_S when refused.

    Every change to the store is handed to `on_event` once, whichever way it came (a watch event, a list, or a
    write of ours through `written`); a version already held is not handed again, so a list after a broken
    watch hands over only what changed meanwhile. After the first list `on_event` gets SYNCED. The legacy
    `on_change` gets each changed object, and None after every list. Both run on the thread that made the
    change; keep them quick.
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
        page_size: int | None = None,
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
        self.page_size = page_size or PAGE_SIZES.get(rtype.kind, PAGE_SIZE)
        self.served = False
        self.refused: int | None = None  # the HTTP status of a refused list (403, 404), while refused
        self.lists = 0
        self.pages = 0
        # What the store keeps of an object: `slim` here; the operator's cache sets `project` (PROJECTIONS).
        self.projection: Callable[[Obj], Obj] = slim
        # Which objects to hold (None: all the selector brings); see the module's docstring.
        self.keep: Callable[[Obj], bool] | None = None
        # Informers that must have listed before this one lists (the owners `keep` looks up).
        self.depends: Callable[[], Iterable[Informer]] | None = None
        self.backoff = Backoff(WATCH_BACKOFF_BASE_S, WATCH_BACKOFF_CAP_S)
        self._orphans: dict[str, set[Key]] = {}
        self._orphan_count = 0
        self._orphans_lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        # Set once its first listing has begun (objects are on their way): informers that depend on this one then
        # wait for it to finish, past DEPENDS_WAIT_S (see _wait_for_depends).
        self.listing = threading.Event()
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

    # ----- changes -----------------------------------------------------------------------------------

    def _notify(self, kind: str, obj: Obj | None, before: Obj | None) -> None:
        try:
            if self.on_event is not None:
                self.on_event(kind, obj, before)
            if self.on_change is not None:
                self.on_change(obj if kind != "SYNCED" else None)
        except Exception:  # a failing callback must not end the watch
            log.exception("%s: change callback failed", self.name)

    def _prepare(self, obj: Obj) -> Obj:
        obj.setdefault("apiVersion", self.rtype.api_version)
        obj.setdefault("kind", self.rtype.kind)
        return self.projection(obj)

    def _trusted(self, obj: Obj) -> bool:
        if self.keep is None or self.keep(obj):
            return True
        uid = controller_uid(obj)
        with self._orphans_lock:
            if uid and self._orphan_count < MAX_ORPHANS:  # its controller may yet appear: read it again then
                keys = self._orphans.setdefault(uid, set())
                if key_of(obj) not in keys:
                    keys.add(key_of(obj))
                    self._orphan_count += 1
        return False

    def handle(self, kind: str, obj: Obj) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) for an object: into the store, and to the callbacks if
        it changed what is held."""
        obj = self._prepare(obj)
        key = key_of(obj)
        if kind == "DELETED":
            before = self.store.delete(*key)
            if before is not None:
                self._notify("DELETED", obj, before)
            return
        if not matches(obj, self.selector) or not self._trusted(obj):
            before = self.store.delete(*key)  # no longer ours (relabelled, or its owner went)
            if before is not None:
                self._notify("DELETED", obj, before)
            return
        stored, before = self.store.offer(obj)
        if stored:
            self._notify(kind if before is None or kind != "ADDED" else "MODIFIED", obj, before)

    def written(self, obj: Obj) -> None:
        """A write's answer (the newest copy): held at once, so the next read sees it, and handed to the
        callbacks now (the watch event that follows is then the same version, and not handed again)."""
        if not self.synced or self.refused is not None or not matches(obj, self.selector):
            return
        obj = self._prepare(copy_of(obj))
        if not self._trusted(obj):
            return
        stored, before = self.store.written(obj)
        if stored:
            self._notify("ADDED" if before is None else "MODIFIED", obj, before)

    def deleted(self, namespace: str, name: str) -> None:
        """Deleted by us: gone from the store now (the watch brings it back if it lingers, for finalizers)."""
        before = self.store.delete(namespace, name)
        if before is not None:
            self._notify("DELETED", before, before)

    def adopt(self, owner_uid: str | None) -> None:
        """An owner appeared: read again the children seen before it (they were not kept then)."""
        if not owner_uid or not self._orphans:
            return
        with self._orphans_lock:
            keys = self._orphans.pop(owner_uid, set())
            self._orphan_count -= len(keys)
        for namespace, name in sorted(keys):
            try:
                found = self.api.get(self.rtype, namespace or None, name)
            except ApiError as exc:
                log.debug("%s: reading %s/%s again: %s", self.name, namespace, name, exc)
                continue
            if found is not None:
                self.handle("ADDED", found)

    # ----- list and watch ----------------------------------------------------------------------------

    def _pages(self) -> Iterator[Obj]:
        """The collection, page by page (limit + continue): one page in memory at a time."""
        path = self.rtype.collection(self.namespace)
        token = ""
        while True:
            query = [("limit", str(self.page_size))]
            if self.selector:
                query.append(("labelSelector", _selector(self.selector)))
            if token:
                query.append(("continue", token))
            page: Obj = self.api._call("GET", path, query=query)
            self.pages += 1
            yield page
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    def _list(self) -> str | None:
        """List the collection into the store; the resourceVersion to watch from, or None if refused. After
        the first list, only what differs from the store is handed to the callbacks."""
        fresh: dict[Key, Obj] = {}
        version = ""
        self.listing.set()
        try:
            for page in self._pages():
                version = str((page.get("metadata") or {}).get("resourceVersion") or version)
                for item in page.get("items") or []:
                    item = self._prepare(item)
                    if self._trusted(item):
                        fresh[key_of(item)] = item
        except ApiError as exc:
            if exc.status == 410:
                raise _Expired from None  # a continue token expired: list from the start
            if exc.status not in (403, 404):
                raise
            if self.refused != exc.status:
                log.info("%s: %s %s (HTTP %d)", self.name, self.rtype.kind,
                         "not served" if exc.status == 404 else "not allowed", exc.status)  # fmt: skip
            self.refused, self.served = exc.status, False
            gone = self.store.snapshot()
            self.store.replace(())
            first = not self._synced.is_set()
            self._synced.set()
            if not first:
                for obj in gone.values():
                    self._notify("DELETED", obj, obj)
            return None
        self.lists += 1
        first = not self._synced.is_set()
        held = self.store.snapshot()
        changes: list[tuple[str, Obj, Obj | None]] = []
        for key, obj in fresh.items():
            before = held.get(key)
            if before is not None and version_of(before) == version_of(obj):
                fresh[key] = before  # unchanged: keep the copy held
            else:
                changes.append(("ADDED" if before is None else "MODIFIED", obj, before))
        changes += [("DELETED", obj, obj) for key, obj in held.items() if key not in fresh]
        self.store.replace(fresh.values())
        self.refused, self.served = None, True
        self._synced.set()
        if first:
            self._notify("SYNCED", None, None)
            return version
        for kind, obj, before in changes:
            self._notify(kind, obj, before)
        if self.on_change is not None and self.on_event is None:
            self._notify("SYNCED", None, None)
        return version

    def _wait_for_depends(self) -> None:
        if self.depends is None:
            return
        start = time.monotonic()
        for other in self.depends():
            while other is not self and not other.synced and not self._stop.is_set():
                waited = time.monotonic() - start
                if waited > DEPENDS_LISTING_WAIT_S:
                    return
                if waited > DEPENDS_WAIT_S and not other.listing.is_set():
                    # a kind with nothing to list (kopf lists one only once it exists): on to the next owner,
                    # whose listing may well be under way (returning here listed the children before thousands
                    # of owners whenever one owner kind had no object, a GET per child)
                    break
                other.wait_synced(0.2)

    def _pause(self, seconds: float) -> None:
        if not self._stop.is_set():
            self._stop.wait(seconds)

    def _run(self) -> None:
        self._wait_for_depends()
        while not self._stop.is_set():
            try:
                version = self._list()
                if version is None:
                    self._poke.wait(None if self.refused == 404 else REDISCOVER_S)
                    self._poke.clear()
                    continue
                while not self._stop.is_set():
                    began = time.monotonic()
                    try:
                        version = self._watch_once(version)
                    except (_Expired, Exception):
                        if time.monotonic() - began >= WATCH_HEALTHY_S:
                            self.backoff.reset()  # it ran well for a while: this is a fresh failure
                        raise
                    self.backoff.reset()  # the server ended the stream as asked: watch on
            except _Expired:
                # Too old to watch from: list again (at once the first time; a watch that keeps expiring
                # waits like any other failure).
                if self.backoff.failures:
                    self._pause(self.backoff.next())
                else:
                    self.backoff.failures = 1
                log.debug("%s: watch expired; listing again", self.name)
            except Exception as exc:  # API restarts and network blips: back off and list again
                wait = self.backoff.next()
                log.info("%s: watch error %s; listing again in %.1fs", self.name, exc, wait)
                self._pause(wait)

    def _watch_once(self, version: str) -> str:
        query = self.selector or None
        try:
            events = self.api.watch(self.rtype, self.namespace, version, self.watch_timeout_s, selector=query)
            for event in events:
                kind = str(event.get("type"))
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Expired
                    raise WatchError(f"{obj.get('code')} {obj.get('reason')}: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self.handle(kind, obj)
                if self._stop.is_set():
                    break
        except ApiError as exc:
            if exc.status == 410:
                raise _Expired from None
            raise
        return version


class WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410 Gone."""


class _Expired(Exception):
    """The watch's resourceVersion is too old: list again."""
