"""A fault-injecting HTTP proxy in front of the local API server: errors, stalls and held requests on demand.

Clients speak plain HTTP to the proxy on loopback; the proxy speaks HTTPS to kube-apiserver, checking its
certificate against the control plane's CA. Faults are drawn from a seeded random generator per request, so
a run is reproducible for a given request order. Watches stream through untouched unless asked.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


@dataclass
class Request:
    """What a fault rule sees of a request."""

    method: str
    path: str
    query: str
    user_agent: str

    @property
    def is_watch(self) -> bool:
        return "watch=true" in self.query or "watch=1" in self.query

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


@dataclass
class Faults:
    """Fractions of requests answered with an error or stalled; `applies` picks the requests at risk.

    `after_forward` is the share of injected 5xx that are sent upstream first, so the change lands and only
    the answer is lost: the client cannot tell whether its write happened.
    """

    rates: dict[int, float] = field(default_factory=dict)
    stall_rate: float = 0.0
    stall_s: float = 0.0
    retry_after: str | None = "1"
    after_forward: float = 0.5
    conflict_writes_only: bool = True
    applies: Callable[[Request], bool] = lambda r: not r.is_watch
    seed: int = 1


class FaultProxy:
    """Runs in a background thread with its own event loop; `start()`, `stop()`, `url`, `counts`."""

    def __init__(self, upstream: str, ca_path: Path, faults: Faults | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.ca_path = ca_path
        self.faults = faults or Faults()
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._holds: list[tuple[Callable[[Request], bool], threading.Event, asyncio.Event, list[str]]] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults
            self._rng = random.Random(faults.seed)

    def hold(self, match: Callable[[Request], bool]) -> Hold:
        """Hold the first request matching `match` until released (forwarded) or dropped (never answered)."""
        seen = threading.Event()
        gate = asyncio.Event()
        decision: list[str] = []
        entry = (match, seen, gate, decision)
        with self._lock:
            self._holds.append(entry)
        return Hold(self, seen, gate, decision)

    def kubeconfig(self, source: Path, dest: Path) -> Path:
        """A copy of `source` (a kubeconfig with a token) that talks to the proxy instead."""
        config = yaml.safe_load(source.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"] = {"server": self.url}
        dest.write_text(yaml.safe_dump(config))
        dest.chmod(0o600)
        return dest

    # ----- inside the loop ------------------------------------------------------------------------

    async def _start(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=200),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = int(server.sockets[0].getsockname()[1])

    async def _stop(self) -> None:
        for _, _seen, gate, decision in self._holds:
            decision.append("drop")
            gate.set()
        # Closing the upstream session first ends the watch streams still passing through.
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _draw(self, req: Request) -> tuple[int | None, bool, bool]:
        """(injected status or None, stall?, forward before answering with the error?)"""
        with self._lock:
            f = self.faults
            if not f.applies(req):
                return None, False, False
            roll = self._rng.random()
            for code, rate in sorted(f.rates.items()):
                if code == 409 and f.conflict_writes_only and not req.is_write:
                    continue
                if roll < rate:
                    forward_first = code >= 500 and req.is_write and self._rng.random() < f.after_forward
                    return code, False, forward_first
                roll -= rate
            return None, roll < f.stall_rate, False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        req = Request(
            request.method, request.path, request.query_string, request.headers.get("User-Agent", "")
        )
        body = await request.read()
        for entry in list(self._holds):
            match, seen, gate, decision = entry
            if match(req):
                with self._lock:
                    self._holds.remove(entry)
                self.counts["held"] += 1
                seen.set()
                await gate.wait()
                if decision and decision[0] == "drop":
                    # The writer is gone; nothing upstream ever sees this request.
                    if request.transport is not None:
                        request.transport.close()
                    return web.Response(status=499)
                break
        code, stall, forward_first = self._draw(req)
        if stall:
            self.counts["stall"] += 1
            await asyncio.sleep(self.faults.stall_s)
        if code is not None:
            self.counts[str(code)] += 1
            if forward_first:
                self.counts[f"{code}-after-forward"] += 1
                async with self._upstream(request, body) as upstream:
                    await upstream.read()
            return self._error(code)
        async with self._upstream(request, body) as upstream:
            headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
            response = web.StreamResponse(status=upstream.status, headers=headers)
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    def _upstream(self, request: web.Request, body: bytes) -> Any:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        return self._session.request(
            request.method, self.upstream + request.rel_url.raw_path_qs, headers=headers, data=body or None
        )

    def _error(self, code: int) -> web.Response:
        reasons = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
        headers = {}
        if code in (429, 503) and self.faults.retry_after:
            headers["Retry-After"] = self.faults.retry_after
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
             "reason": reasons.get(code, "InternalError"), "message": f"injected by the fault proxy ({code})"},
            status=code, headers=headers,
        )  # fmt: skip


class Hold:
    """A held request: wait until it arrives, then forward it or drop it."""

    def __init__(self, proxy: FaultProxy, seen: threading.Event, gate: asyncio.Event, decision: list[str]):
        self._proxy = proxy
        self._seen = seen
        self._gate = gate
        self._decision = decision

    def wait(self, timeout: float = 60.0) -> None:
        if not self._seen.wait(timeout):
            raise AssertionError(f"no matching request reached the proxy in {timeout}s")

    def release(self) -> None:
        self._decision.append("forward")
        self._proxy._loop.call_soon_threadsafe(self._gate.set)

    def drop(self) -> None:
        self._decision.append("drop")
        self._proxy._loop.call_soon_threadsafe(self._gate.set)
