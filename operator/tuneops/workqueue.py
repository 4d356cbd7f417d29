"""A work queue of resource keys, as controllers keep one: each key at most once in the queue, never handed to
two workers at once, and due either now (something changed) or later (look again after a delay)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    """Keys due at a time. Adding a key already queued keeps the earlier of the two times; adding a key a
    worker holds queues it again once the worker is done (so a change during a reconcile is never lost)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}
        self._held: set[K] = set()
        self._again: dict[K, float] = {}
        self._seq = itertools.count()
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        with self._cond:
            due = self._clock() + max(0.0, delay)
            if key in self._held:
                self._again[key] = min(due, self._again.get(key, due))
                return
            if key in self._due and self._due[key] <= due:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._seq), key))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> K | None:
        """The next due key (the caller holds it until `done`), or None when closed or after `timeout`."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier time for the same key
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._due[key]
                    self._held.add(key)
                    return key
                wait = self._heap[0][0] - now if self._heap else None
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)
            return None

    def done(self, key: K) -> None:
        with self._cond:
            self._held.discard(key)
            due = self._again.pop(key, None)
        if due is not None:
            self.add(key, due - self._clock())

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._due)

    def pending(self, now_only: bool = False) -> int:
        """Keys queued (only those due now, with `now_only`)."""
        with self._cond:
            if not now_only:
                return len(self._due)
            now = self._clock()
            return sum(1 for due in self._due.values() if due <= now)
