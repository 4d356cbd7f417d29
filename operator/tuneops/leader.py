"""Leader election on a coordination.k8s.io/v1 Lease, as client-go does it: one active operator among replicas.

The Lease names its holder and when the holder last renewed it. A candidate takes the Lease when nobody
holds it, or when the record has not changed for the holder's `leaseDurationSeconds` as measured on the
candidate's own clock (timestamps written by another machine are never compared with this one's, so clock
skew cannot hand the Lease to two processes). Every write is a create or a PUT carrying the resourceVersion
that was read, so of two candidates writing at once the API server accepts one and answers the other 409.

The holder renews every `renew_s`; when it cannot renew for so long that the Lease could soon be taken by a
standby, it reports the loss (the caller exits: a process that may no longer be the leader must stop acting as
one). On a clean shutdown `release()` clears the holder, so a standby takes over at once instead of waiting
for the Lease to expire.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import urllib3

from tuneops.kube.client import ApiError, Kube, RetryPolicy
from tuneops.kube.types import LEASE, ResourceType

log = logging.getLogger(__name__)

Obj = dict[str, Any]


class LeaseClient(Protocol):
    """The three requests the elector makes (kube.client.Kube has them)."""

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None: ...

    def create(self, rtype: ResourceType, namespace: str | None, body: Obj) -> Obj: ...

    def replace(self, rtype: ResourceType, obj: Obj) -> Obj: ...


def micro_time(when: dt.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC), the format of a Lease's acquire and renew times."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _spec(lease: Obj | None) -> Obj:
    return dict((lease or {}).get("spec") or {})


def _version(lease: Obj) -> str:
    return str((lease.get("metadata") or {}).get("resourceVersion") or "")


class LeaderElector:
    """Holds the Lease `namespace/name` for `identity`: acquire() once, then keep() it, release() at the end."""

    def __init__(
        self,
        kube: LeaseClient,
        namespace: str,
        name: str,
        identity: str,
        lease_s: float = 15.0,
        renew_s: float = 10.0,
        retry_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = _utcnow,
    ):
        """`lease_s`: how long a standby waits for a silent holder; `renew_s`: how often the holder renews;
        `retry_s`: how often a standby looks, and how soon a failed renewal is tried again. `clock` measures
        intervals (monotonic); `wall` stamps the Lease's acquire and renew times."""
        if not 0 < retry_s < renew_s < lease_s:
            raise ValueError(f"need 0 < retry_s < renew_s < lease_s, got {retry_s}, {renew_s}, {lease_s}")
        if not identity:
            raise ValueError("identity must not be empty")
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.retry_s = retry_s
        self._clock = clock
        self._wall = wall
        self._lease: Obj | None = None  # the Lease as last written by us, while we hold it
        self._renewed_at = 0.0  # clock() when the request of our last successful write started
        self._observed: tuple[str, float] | None = None  # (resourceVersion, clock() when first seen)
        self._holder_seen = ""
        self._last_error = ""
        self._lock = threading.Lock()  # one write at a time: renewals and release()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        """Whether this process holds the Lease, as far as it knows (renewed within the last lease_s)."""
        return self._lease is not None

    # ----- public ----------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this process holds the Lease (True) or `stop` is set (False)."""
        while not stop.is_set():
            if self.try_acquire():
                return True
            stop.wait(self.retry_s)
        return False

    def try_acquire(self) -> bool:
        """One look at the Lease, taking it when it is free, expired or already ours; True when held."""
        return self._attempt(renewing=False, timeout_s=self.lease_s) is True

    def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew the Lease every renew_s in a daemon thread until `stop` is set or release() is called.

        When a renewal has not succeeded by one retry period before the Lease would expire (from this
        process' point of view), or the Lease names another holder, `on_lost` is called once and renewing
        ends; the caller is expected to stop the process, so it never acts as leader alongside another.
        """
        if self._lease is None:
            raise RuntimeError("keep() needs the Lease: call acquire() first")
        halt = self._halt = threading.Event()
        threading.Thread(target=self._follow, args=(stop, halt), name="lease-stop", daemon=True).start()
        self._thread = threading.Thread(
            target=self._renew_loop, args=(halt, on_lost), name=f"lease-{self.name}", daemon=True
        )
        self._thread.start()
        return self._thread

    def release(self) -> None:
        """Stop renewing and clear the holder, so a standby takes over at once (a clean shutdown)."""
        self._halt.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.lease_s)
        with self._lock:
            lease, self._lease = self._lease, None
            if lease is None:
                return
            body = copy.deepcopy(lease)
            spec = body.setdefault("spec", {})
            spec.pop("holderIdentity", None)
            now = micro_time(self._wall())
            spec.update({"leaseDurationSeconds": 1, "acquireTime": now, "renewTime": now})
            try:
                self._client(self.retry_s * 2).replace(LEASE, body)
            except ApiError as exc:
                # 409: the Lease was written since our last renewal, so someone else holds it already.
                level = logging.INFO if exc.status == 409 else logging.WARNING
                log.log(level, "lease %s/%s: not released (%s)", self.namespace, self.name, exc)
                return
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.warning(
                    "lease %s/%s: not released (%s); it expires on its own", self.namespace, self.name, exc
                )
                return
        log.info("lease %s/%s: released by %s", self.namespace, self.name, self.identity)

    # ----- renewing --------------------------------------------------------------------------------

    @staticmethod
    def _follow(stop: threading.Event, halt: threading.Event) -> None:
        stop.wait()
        halt.set()

    def _renew_loop(self, halt: threading.Event, on_lost: Callable[[], None]) -> None:
        next_at = self._renewed_at + self.renew_s
        while True:
            if halt.wait(max(0.0, next_at - self._clock())):
                return
            # Give up one retry period before the Lease could be taken, so the process is gone by then.
            give_up = self._renewed_at + self.lease_s - self.retry_s
            now = self._clock()
            outcome = None if now >= give_up else self._attempt(renewing=True, timeout_s=give_up - now)
            if halt.is_set():
                return
            if outcome is True:
                next_at = self._renewed_at + self.renew_s
                continue
            if outcome is None and self._clock() < give_up:
                next_at = min(self._clock() + self.retry_s, give_up)
                continue
            with self._lock:
                self._lease = None
            log.error(
                "lease %s/%s: lost by %s (%s)",
                self.namespace, self.name, self.identity,
                "another holder took it" if outcome is False else "could not renew it in time",
            )  # fmt: skip
            on_lost()
            return

    # ----- one attempt -----------------------------------------------------------------------------

    def _client(self, timeout_s: float) -> LeaseClient:
        """The client, with no retries of its own and a timeout that keeps a hung request within the Lease."""
        if isinstance(self.kube, Kube):
            policy = RetryPolicy(attempts=1, timeout_s=max(0.5, min(timeout_s, self.kube.retry.timeout_s)))
            return Kube(self.kube.api, retry=policy, user_agent=self.kube.api.user_agent)
        return self.kube

    def _attempt(self, *, renewing: bool, timeout_s: float) -> bool | None:
        """Hold the Lease once more. True: held; False: another process holds it; None: no answer (errors)."""
        client = self._client(timeout_s)
        with self._lock:
            if renewing and self._lease is None:
                return False  # released meanwhile
            started = self._clock()
            try:
                if renewing and self._lease is not None:
                    try:
                        return self._write(client, self._lease, started)
                    except ApiError as exc:
                        if exc.status not in (404, 409):
                            raise
                        # Written or deleted by someone else since our last renewal: look at what is there.
                current = client.get(LEASE, self.namespace, self.name)
                if current is None:
                    created = client.create(LEASE, self.namespace, self._fresh())
                    return self._hold(created, started, taken_from="")
                holder = str(_spec(current).get("holderIdentity") or "")
                if holder and holder != self.identity and (renewing or not self._expired(current, holder)):
                    return False
                return self._write(client, current, started)
            except ApiError as exc:
                if exc.status == 409:
                    return False  # another candidate wrote first (a stale resourceVersion, or AlreadyExists)
                self._error(exc)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                self._error(exc)
            return None

    def _write(self, client: LeaseClient, current: Obj, started: float) -> bool:
        """PUT `current` (its resourceVersion guards the write) with us as holder and a fresh renewTime."""
        spec = _spec(current)
        previous = str(spec.get("holderIdentity") or "")
        now = micro_time(self._wall())
        spec.update(
            {"holderIdentity": self.identity, "leaseDurationSeconds": self._duration(), "renewTime": now}
        )
        if previous != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        body = {**copy.deepcopy(current), "spec": spec}
        return self._hold(client.replace(LEASE, body), started, taken_from=previous)

    def _fresh(self) -> Obj:
        now = micro_time(self._wall())
        return {
            "apiVersion": LEASE.api_version,
            "kind": LEASE.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": self._duration(),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }

    def _hold(self, lease: Obj, started: float, taken_from: str) -> bool:
        first = self._lease is None
        self._lease, self._renewed_at, self._last_error = lease, started, ""
        if first:
            how = (
                f"took it over from {taken_from}"
                if taken_from and taken_from != self.identity
                else "acquired"
            )
            log.info("lease %s/%s: %s %s", self.namespace, self.name, self.identity, how)
        return True

    def _expired(self, lease: Obj, holder: str) -> bool:
        """Whether `lease` has stayed unchanged for its leaseDurationSeconds since this process first saw it."""
        version, now = _version(lease), self._clock()
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, now)
        if holder != self._holder_seen:
            self._holder_seen = holder
            log.info("lease %s/%s: held by %s; standing by", self.namespace, self.name, holder)
        duration = float(_spec(lease).get("leaseDurationSeconds") or self.lease_s)
        return now - self._observed[1] >= duration

    def _duration(self) -> int:
        return max(1, math.ceil(self.lease_s))

    def _error(self, exc: Exception) -> None:
        text = str(exc)
        if text != self._last_error:  # once per distinct failure, not every retry period
            self._last_error = text
            log.warning("lease %s/%s: %s", self.namespace, self.name, text)
