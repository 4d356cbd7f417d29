"""kopf registrations only: each kind's events and resync timer call its level-based reconciler."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import kopf

from tuneops import GROUP, VERSION, labels, metrics
from tuneops.api import KINDS
from tuneops.api.conditions import TERMINAL_REASONS, Reason
from tuneops.kube import client as k
from tuneops.reconcile.base import Context, Outcome, Reconcile
from tuneops.reconcile.inferenceservice import publish_adapters

log = logging.getLogger(__name__)

# Backoff of a resource whose reconcile keeps raising: doubles per failure up to the cap, with jitter, and
# resets on the first success. Bounded, so a fixed bug or a recovered API server is picked up within minutes.
ERROR_BACKOFF_BASE_S = 1.0
ERROR_BACKOFF_CAP_S = 300.0


def error_backoff(failures: int, rng: Callable[[], float] = random.random) -> float:
    """Seconds before the next try after `failures` consecutive errors (1, 2, 4 ... 300, +-25% jitter)."""
    raw = min(ERROR_BACKOFF_CAP_S, ERROR_BACKOFF_BASE_S * float(2 ** max(0, min(failures - 1, 16))))
    return round(raw * (0.75 + 0.5 * float(rng())), 3)


class Tracker:
    """Per-object locks (a timer and an event never reconcile the same object at once) and condition gauges."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self._states: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._failures: dict[tuple[str, str, str], int] = {}

    def lock(self, key: tuple[str, str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def record(self, key: tuple[str, str, str], ready: str, reason: str) -> None:
        with self._guard:
            self._states[key] = (ready, reason)
            self._publish()

    def failed(self, key: tuple[str, str, str]) -> int:
        """Count one more consecutive failure of `key`; returns the count."""
        with self._guard:
            self._failures[key] = self._failures.get(key, 0) + 1
            return self._failures[key]

    def succeeded(self, key: tuple[str, str, str]) -> None:
        with self._guard:
            self._failures.pop(key, None)

    def forget(self, key: tuple[str, str, str]) -> None:
        with self._guard:
            self._states.pop(key, None)
            self._locks.pop(key, None)
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


def make_handler(ctx: Context, tracker: Tracker, kind: str, reconcile: Reconcile) -> Callable[..., None]:
    def handle(body: kopf.Body, **_: Any) -> None:
        obj = dict(body)
        meta = obj.get("metadata") or {}
        key = (kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        if meta.get("deletionTimestamp"):
            return  # children go with the garbage collector; nothing of ours lives outside the cluster
        started = time.monotonic()
        with tracker.lock(key):
            try:
                # A fresh read: the body kopf hands over may predate our own last status write.
                fresh = ctx.kube.get(k.TYPES[(str(obj.get("apiVersion")), kind)], key[1], key[2])
                if fresh is None:
                    return
                outcome = reconcile(ctx, fresh)
            except Exception as exc:
                # Whatever one object does (a malformed body, a bug, an API server that stays away past the
                # client's retry budget) stays with that object: it is logged, counted and retried with
                # backoff, while kopf keeps serving every other object.
                failures = tracker.failed(key)
                delay = error_backoff(failures)
                metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
                metrics.RECONCILE_TOTAL.labels(kind=kind, result="error").inc()
                log.error(
                    "%s %s/%s: reconcile failed (%d in a row), retrying in %.1fs: %s: %s",
                    kind, key[1], key[2], failures, delay, type(exc).__name__, exc,
                    exc_info=not isinstance(exc, k.ApiError | k.NotFound),
                )  # fmt: skip
                raise kopf.TemporaryError(f"{type(exc).__name__}: {exc}"[:1000], delay=delay) from exc
            finally:
                metrics.RECONCILE_DURATION.labels(kind=kind).observe(time.monotonic() - started)
        tracker.succeeded(key)
        metrics.RECONCILE_TOTAL.labels(kind=kind, result=_result(outcome)).inc()
        ready = "True" if outcome.ready else ("False" if outcome.reason else "Unknown")
        tracker.record(key, ready, outcome.reason)
        if outcome.requeue_after is not None:
            raise kopf.TemporaryError(
                outcome.message or outcome.reason or "in progress", delay=outcome.requeue_after
            )

    return handle


def register(
    registry: kopf.OperatorRegistry,
    ctx: Context,
    reconcilers: dict[str, Reconcile],
    resync_seconds: float,
) -> Tracker:
    """Register create/update/resume handlers and a resync timer for each kind on `registry`."""
    tracker = Tracker()
    for kind, reconcile in reconcilers.items():
        info = KINDS[kind]
        handle = make_handler(ctx, tracker, kind, reconcile)
        resource = (GROUP, VERSION, info.plural)
        kopf.on.resume(*resource, registry=registry, id="reconcile")(handle)
        kopf.on.create(*resource, registry=registry, id="reconcile")(handle)
        kopf.on.update(*resource, field="spec", registry=registry, id="reconcile")(handle)
        # A person asks to read the inputs again (see labels.REFRESH) without changing the spec.
        refresh = ("metadata", "annotations", labels.REFRESH)
        kopf.on.update(*resource, field=refresh, registry=registry, id="refresh")(handle)

        def resync(body: kopf.Body, _handle: Callable[..., None] = handle, **kw: Any) -> None:
            # The event handler's own retries drive progress; the timer only catches drift.
            with contextlib.suppress(kopf.TemporaryError):
                _handle(body=body, **kw)

        kopf.timer(*resource, interval=resync_seconds, idle=resync_seconds, registry=registry, id="resync")(
            resync
        )

        def forget(body: kopf.Body, _kind: str = kind, **_: Any) -> None:
            meta = body.get("metadata") or {}
            key = (_kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
            tracker.forget(key)
            if _kind == "InferenceService":
                publish_adapters(key[1], key[2], None)

        kopf.on.delete(*resource, optional=True, registry=registry, id="forget")(forget)
    return tracker
