"""The control loop: the tuneops resources (fed by kopf's handlers, see runner.py) and their children (informers)
are kept in memory, a change queues the resources it concerns, and workers reconcile them from memory.

The three tuneops kinds are watched by kopf: its index handlers fill their stores during its first listing (kopf
holds every other handler until all three kinds are listed), and its event handlers keep the stores current and
queue the resources (`listed`, `event`). Children stay on informers of their own, selected by the operator's
label on the server (kopf filters labels on the client, so it would receive every Pod of the cluster).

What queues a resource:
  - the watches declared per kind (tuneops.watches, the table "What wakes a resource" in docs/reliability.md):
    For, its own change that asks for work (created, spec (generation), labels or annotations changed, being
    deleted); Owns, a change to a child whose controller ownerReference names it (uid checked; a Pod through
    its Job, Deployment or LeaderWorkerSet); Watches, a change to a tuneops resource its spec references;
  - its adapter pass finishing after the reconcile stopped waiting for it;
  - a step still in progress, after the poll interval (a slow fallback: a child's change comes first);
  - an error, after a growing, bounded backoff;
  - the resync timer, for every resource (catches what no watch reports).

A settled operator makes no API requests beyond its watch streams: reads come from memory, and status is
written only when it changes.
"""

from __future__ import annotations

import copy
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tuneops import backoff, labels, metrics
from tuneops.api.conditions import TERMINAL_REASONS, Reason
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.kube import types as kt
from tuneops.kube.cache import CachedKube
from tuneops.kube.informer import Informer, Obj, key_of
from tuneops.reconcile.base import Context, Outcome, Reconcile
from tuneops.reconcile.inferenceservice import publish_adapters
from tuneops.watches import Key, Watches, asks_for_work
from tuneops.workqueue import WorkQueue

log = logging.getLogger(__name__)

# Backoff of a resource whose reconcile keeps raising: doubles per failure up to the cap, with jitter, and
# resets on the first success. Bounded, so a fixed bug or a recovered API server is picked up within minutes.
ERROR_BACKOFF_BASE_S = 1.0
ERROR_BACKOFF_CAP_S = 300.0
# Labels the children's informers index, as the reconcilers select children by them.
INDEXED_LABELS = (labels.OWNER, "job-name", labels.INSTANCE)


def error_backoff(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after `failures` consecutive errors (1, 2, 4 ... 300, +-25% jitter)."""
    return round(backoff.delay(failures - 1, ERROR_BACKOFF_BASE_S, ERROR_BACKOFF_CAP_S, rng=rng), 3)


class Tracker:
    """Consecutive failures per resource (for the backoff) and the resources-by-condition gauge."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._states: dict[Key, tuple[str, str]] = {}
        self._failures: dict[Key, int] = {}

    def record(self, key: Key, ready: str, reason: str) -> None:
        with self._guard:
            if self._states.get(key) == (ready, reason):
                return
            self._states[key] = (ready, reason)
            self._publish()

    def failed(self, key: Key) -> int:
        """Count one more consecutive failure of `key`; returns the count."""
        with self._guard:
            self._failures[key] = self._failures.get(key, 0) + 1
            return self._failures[key]

    def succeeded(self, key: Key) -> None:
        with self._guard:
            self._failures.pop(key, None)

    def forget(self, key: Key) -> None:
        with self._guard:
            self._states.pop(key, None)
            self._failures.pop(key, None)
            self._publish()

    def _publish(self) -> None:
        counts = Counter((kind, ns, ready, reason) for (kind, ns, _), (ready, reason) in self._states.items())
        metrics.RESOURCES.clear()
        for (kind, ns, ready, reason), n in counts.items():
            metrics.RESOURCES.labels(kind=kind, resource_namespace=ns, ready=ready, reason=reason).set(n)


def _result(outcome: Outcome) -> str:
    if outcome.ready:
        return "ready"
    if outcome.reason in (Reason.WAITING_FOR_SOURCE, Reason.EXTENSION_NOT_INSTALLED):
        return "waiting"
    if outcome.reason == Reason.INVALID_SPEC:
        return "invalid"
    # A terminal reason counts as failed even while the operator keeps looking (a Pod in ImagePullBackOff).
    if outcome.requeue_after is not None and outcome.reason not in TERMINAL_REASONS:
        return "progressing"
    return "failed"


def child_types(config: OperatorConfig) -> tuple[k.ResourceType, ...]:
    """The kinds the operator makes and reads back, by the API versions this cluster serves."""
    pdb = k.PDB if config.features.pdb_v1 else k.PDB_BETA
    hpa = kt.HPA if config.features.hpa_v2 else kt.HPA_BETA
    return (k.JOB, k.POD, k.DEPLOYMENT, k.LWS, k.SERVICE, k.CONFIGMAP, pdb, k.NETWORKPOLICY, hpa,
            kt.SCALEDOBJECT, kt.INFERENCEPOOL, kt.HTTPROUTE)  # fmt: skip


class KopfFed(Informer):
    """The informer of one tuneops kind in one scope, as the cache reads it, whose events come from kopf's
    handlers (`handle`) instead of a watch of its own: no thread; synced once kopf has listed every tuneops kind
    (`Controller.event`)."""

    def __init__(
        self,
        api: k.Kube,
        rtype: k.ResourceType,
        name: str,
        namespace: str | None,
        on_event: Callable[[str, Obj | None, Obj | None], None],
    ) -> None:
        super().__init__(api, rtype, name=name, namespace=namespace, on_event=on_event)
        self.served = True
        self._listed = threading.Event()

    def start(self) -> None:
        pass  # kopf watches

    def stop(self) -> None:
        pass

    def alive(self) -> bool:
        return True  # kopf's watch is kopf's: a watcher that fails stops the operator

    def wait_synced(self, timeout: float = 30.0) -> bool:
        return self._listed.wait(timeout)

    @property
    def synced(self) -> bool:
        return self._listed.is_set()

    def mark_listed(self) -> None:
        self._listed.set()


def _own_copy(raw: Obj, rtype: k.ResourceType) -> Obj:
    """An object kopf hands over, copied down to its metadata (the informer slims and projects what it keeps;
    kopf's own dict stays as it is)."""
    obj = {**raw, "metadata": dict(raw.get("metadata") or {})}
    obj.setdefault("apiVersion", rtype.api_version)
    obj.setdefault("kind", rtype.kind)
    return obj


class Controller:
    """The stores kopf feeds, the children's informers, the work queue and its workers, for the kinds in
    `reconcilers`."""

    def __init__(
        self,
        kube: k.Kube,
        config: OperatorConfig,
        reconcilers: dict[str, Reconcile],
        *,
        namespaces: list[str] | None = None,
        resync_s: float = 300.0,
        poll_s: float = 30.0,
        workers: int = 8,
    ) -> None:
        self.cache = CachedKube(kube)
        self.watches = Watches(self.cache, config)
        self.reconcilers = reconcilers
        self.ctx = Context(kube=self.cache, config=config, poll_seconds=poll_s, wake=self.wake)
        self.queue: WorkQueue[Key] = WorkQueue()
        self.tracker = Tracker()
        self.resync_s = resync_s
        self.workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started = threading.Event()
        self.own: list[KopfFed] = []
        self.children: list[Informer] = []
        self._feeds: dict[tuple[str, str | None], KopfFed] = {}
        managed = {labels.MANAGED_BY: labels.MANAGED_BY_VALUE}
        scopes: list[str | None] = list(namespaces or []) or [None]
        for ns in scopes:
            where = ns or "all"
            for kind in reconcilers:
                rtype = k.CUSTOM[kind]
                feed = KopfFed(kube, rtype, f"kopf-{rtype.plural}-{where}", ns, self._own_event(kind))
                self._feeds[(kind, ns)] = feed
                self.own.append(feed)
                self.cache.add(feed)
            for rtype in child_types(config):
                inf = Informer(kube, rtype, name=f"watch-{rtype.plural}-{where}", namespace=ns, selector=managed,
                               index_keys=INDEXED_LABELS, on_event=self._child_event(rtype))  # fmt: skip
                self.children.append(inf)
                self.cache.add(inf)

    # ----- life cycle -------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the children's informers; once each has listed, queue every resource kopf has listed and start
        the workers. False if stopped before that. (The tuneops kinds do not wait: with none in the cluster kopf
        has nothing to hand over, and what it lists later is queued as it comes, see `event`.)"""
        for inf in self.children:
            inf.start()
        for inf in self.children:
            while not inf.wait_synced(1.0):
                if self._stop.is_set():
                    return False
        log.info("watching %d kinds; %d resources", len(self.own) + len(self.children),
                 sum(len(i.store) for i in self.own))  # fmt: skip
        self._queue_all("start")
        for n in range(self.workers):
            self._spawn(self._work, f"reconcile-{n}")
        self._spawn(self._resync, "resync")
        self.started.set()
        return True

    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        for inf in self.children:
            inf.stop()

    def health(self) -> dict[str, Any]:
        """For the liveness probe: raises when an informer or worker died."""
        dead = [i.name for i in self.own + self.children if not i.alive()]
        dead += [t.name for t in self._threads if not t.is_alive()]
        if dead and not self._stop.is_set():
            raise RuntimeError(f"stopped threads: {', '.join(dead)}")
        return {"started": self.started.is_set(), "queued": len(self.queue)}

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ----- what queues a resource -------------------------------------------------------------------

    def wake(self, kind: str, namespace: str, name: str, cause: str = "adapters", delay: float = 0.0) -> None:
        metrics.WAKEUPS.labels(cause=cause).inc()
        log.debug("queued %s %s/%s (%s) in %.1fs", kind, namespace, name, cause, delay)
        self.queue.add((kind, namespace, name), delay)
        metrics.QUEUE_DEPTH.set(len(self.queue))

    def _queue_all(self, cause: str, spread_s: float = 0.0) -> None:
        for inf in self.own:
            if not inf.synced:
                continue  # still being listed: kopf's first event queues every one of them
            for obj in inf.store.list():
                ns, name = key_of(obj)
                self.wake(inf.rtype.kind, ns, name, cause, random.uniform(0.0, spread_s))

    # ----- kopf's handlers (runner.py) -------------------------------------------------------------

    def _feed(self, kind: str, obj: Obj) -> KopfFed | None:
        namespace = key_of(obj)[0]
        return self._feeds.get((kind, namespace)) or self._feeds.get((kind, None))

    def listed(self, kind: str, raw: Obj) -> None:
        """kopf's index handler: an object of its first listing (kopf calls it for every object before any event
        handler). Held at once, so that the first reconcile finds every resource it may read."""
        feed = self._feed(kind, raw)
        if feed is not None and not feed.synced:
            feed.listing.set()  # kopf is listing: the children's informers wait for the end of it
            feed.handle("ADDED", _own_copy(raw, feed.rtype))

    def event(self, kind: str, type_: str | None, raw: Obj) -> None:
        """kopf's event handler: a watch event (type None: listed). The first one means kopf has listed every
        tuneops kind (its index handlers have run for all), so the stores are complete: every resource is
        queued once. After that, an event updates the store and queues what it changed (a version held already,
        as when kopf lists again after its watch expired, changes nothing)."""
        if not self.own[0].synced:
            for listed in self.own:
                listed.mark_listed()
            self._queue_all("start")
        feed = self._feed(kind, raw)
        if feed is not None:  # else a namespace this operator does not watch
            feed.handle(type_ or "ADDED", _own_copy(raw, feed.rtype))

    def _own_event(self, kind: str) -> Callable[[str, Obj | None, Obj | None], None]:
        def on_event(type_: str, obj: Obj | None, before: Obj | None) -> None:
            if obj is None:
                return
            # Its references are known from its first listing on, so a source's first change finds its users.
            self.watches.observe(kind, type_, obj)
            if not self.own[0].synced:
                return  # still listing: the first event queues them all
            if type_ == "DELETED" or asks_for_work(before, obj):  # For
                self.wake(kind, *key_of(obj), cause="spec")
                for parent in self.watches.attached_to(kind, obj, before):  # a LoRAAdapter: its service
                    self.wake(*parent, cause="attached")
            for user in self.watches.users(kind, obj):  # Watches: whoever references it
                self.wake(*user, cause="source")

        return on_event

    def _child_event(self, rtype: k.ResourceType) -> Callable[[str, Obj | None, Obj | None], None]:
        def on_event(type_: str, obj: Obj | None, before: Obj | None) -> None:
            if obj is None:
                if self.started.is_set():
                    self._queue_all("relist")
                return
            for owner in self.watches.owners(rtype, obj, before):  # Owns: the controller, uid checked
                self.wake(*owner, cause="child")

        return on_event

    def _resync(self) -> None:
        while not self._stop.wait(self.resync_s):
            # Spread over a tenth of the period, so a large fleet does not arrive at once.
            self._queue_all("resync", spread_s=min(self.resync_s / 10.0, 30.0))

    # ----- workers ----------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            key = self.queue.get(timeout=1.0)
            if key is None:
                continue
            try:
                self.process(key)
            except Exception:  # process() keeps an object's errors with it; this is a bug in the loop itself
                log.exception("%s %s/%s: unexpected error", *key)
                self.queue.add(key, error_backoff(1))
            finally:
                self.queue.done(key)
                metrics.QUEUE_DEPTH.set(len(self.queue))

    def process(self, key: Key) -> Outcome | None:
        """Reconcile one resource from memory; queue it again as its outcome asks. None when it is gone."""
        kind, ns, name = key
        current = self.cache.get(k.CUSTOM[kind], ns, name)
        if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
            # Children go with the garbage collector; nothing of ours lives outside the cluster.
            self.forget(key)
            return None
        obj = copy.deepcopy(current)
        started = time.monotonic()
        try:
            outcome = self.reconcilers[kind](self.ctx, obj)
        except Exception as exc:
            if isinstance(exc, k.NotFound) and self._gone(key):
                return None
            # Whatever one object does (a malformed body, a bug, an API server that stays away past the
            # client's retry budget) stays with that object: logged, counted and retried with backoff.
            failures = self.tracker.failed(key)
            delay = error_backoff(failures)
            metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
            metrics.RECONCILE_TOTAL.labels(kind=kind, result="error").inc()
            log.error(
                "%s %s/%s: reconcile failed (%d in a row), retrying in %.1fs: %s: %s",
                kind, ns, name, failures, delay, type(exc).__name__, exc,
                exc_info=not isinstance(exc, k.ApiError),
            )  # fmt: skip
            self.queue.add(key, delay)
            return None
        finally:
            metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)
        self.tracker.succeeded(key)
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=_result(outcome)).inc()
        self.tracker.record(
            key, "True" if outcome.ready else ("False" if outcome.reason else "Unknown"), outcome.reason
        )
        if outcome.requeue_after is not None:
            self.queue.add(key, outcome.requeue_after)
        return outcome

    def _gone(self, key: Key) -> bool:
        """After a 404: whether the resource itself is gone. kopf lists again after its watch expires but reports
        no deletion it missed meanwhile; such a resource stays in memory until a write about it fails, and is
        dropped here (one GET, on this error only)."""
        kind, ns, name = key
        try:
            if self.cache.base.get(k.CUSTOM[kind], ns, name) is not None:
                return False
        except k.ApiError:
            return False
        feed = self._feeds.get((kind, ns)) or self._feeds.get((kind, None))
        if feed is not None:
            feed.store.delete(ns, name)
        log.info("%s %s/%s: gone; forgotten", kind, ns, name)
        self.forget(key)
        return True

    def forget(self, key: Key) -> None:
        self.watches.forget(key)
        self.tracker.forget(key)
        if key[0] == "InferenceService":
            publish_adapters(key[1], key[2], None)
        if key[0] == "FineTunedModel":
            metrics.forget_benchmark(key[1], key[2])
