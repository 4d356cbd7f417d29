"""Runs adapter passes on an event loop of their own, so a slow Pod holds none of the operator's handler threads."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# How long a handler waits for its pass; a healthy fleet answers in milliseconds.
HANDLER_WAIT_S = 5.0


@dataclass
class _Pass(Generic[T]):
    inputs: Hashable
    future: concurrent.futures.Future[T]
    consumed: bool = False


class PassRunner(Generic[T]):
    """At most one pass per key at a time, on one event loop thread shared by all keys.

    ``run`` starts a pass (unless one is in flight) and waits up to ``wait_s`` for it. A pass still running then
    returns None and keeps running (and calls ``late()`` when it ends, so the caller looks again at once); the next call for the key takes its result if it was made from the same
    inputs, or starts a fresh pass from the new ones once it ends. The result of a pass made from other inputs
    than the caller's is not returned; it goes, once, to the caller's ``superseded(inputs, result)`` (in the
    caller's thread, before any new pass starts), since what a pass did is a fact whatever its inputs.
    """

    def __init__(self, name: str, wait_s: float = HANDLER_WAIT_S) -> None:
        self.name = name
        self.wait_s = wait_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._passes: dict[Hashable, _Pass[T]] = {}

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name=self.name, daemon=True).start()
            self._loop = loop
        return self._loop

    def run(
        self,
        key: Hashable,
        inputs: Hashable,
        start: Callable[[], Coroutine[Any, Any, T]],
        superseded: Callable[[Hashable, T], None] | None = None,
        late: Callable[[], None] | None = None,
    ) -> T | None:
        orphan: _Pass[T] | None = None
        with self._lock:
            current = self._passes.get(key)
            if current is not None and current.future.done() and not current.consumed:
                current.consumed = True
                del self._passes[key]
                if current.inputs == inputs:
                    return current.future.result()  # finished since the last call
                orphan = current
        if orphan is not None:
            _hand_over(orphan, superseded)  # outside the lock: it may take a while, and other keys go on
        with self._lock:
            current = self._passes.get(key)
            if current is None or current.future.done():
                current = _Pass(inputs, asyncio.run_coroutine_threadsafe(start(), self._event_loop()))
                self._passes[key] = current
        try:
            result = current.future.result(timeout=self.wait_s)
        except concurrent.futures.TimeoutError:
            if late is not None:  # the caller stops waiting: tell it when the pass ends, so it looks again
                current.future.add_done_callback(lambda _: late())
            return None
        with self._lock:
            if self._passes.get(key) is current:
                del self._passes[key]
            first = not current.consumed
            current.consumed = True
        if current.inputs == inputs:
            return result
        if first and superseded is not None:
            superseded(current.inputs, result)
        return None

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for p in self._passes.values() if not p.future.done())


def _hand_over(finished: _Pass[T], superseded: Callable[[Hashable, T], None] | None) -> None:
    """A finished pass nobody will take: its result to ``superseded``; a pass that raised is dropped."""
    if superseded is not None and finished.future.exception() is None:
        superseded(finished.inputs, finished.future.result())
