"""Fake vLLM Pods on loopback for the runtime LoRA client: one that behaves, and hostile ones that do not."""

from __future__ import annotations

import gzip
import io
import json
import socket
import threading
from collections.abc import Callable
from typing import Any

BASE = "base"
# What a hostile Pod does when asked anything.
Behaviour = Callable[["Request"], None]


class Request:
    """One parsed request on a raw connection; the behaviour writes whatever bytes it likes."""

    def __init__(
        self, conn: socket.socket, method: str, path: str, body: bytes, stop: threading.Event
    ) -> None:
        self.conn, self.method, self.path, self.body = conn, method, path, body
        self.stop = stop  # set when the server stops: stalling behaviours end with it

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def head(self, status: int, headers: dict[str, str] | None = None, length: int | None = None) -> None:
        lines = [f"HTTP/1.1 {status} X", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        self.conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())

    def reply(self, status: int, body: bytes | Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.head(status, {"Content-Type": "application/json", **(headers or {})}, len(data))
        self.conn.sendall(data)


class FakePod:
    """A server on 127.0.0.1, a random port, threads of this process; ``hits`` counts requests by path."""

    def __init__(self, behaviour: Behaviour, host: str = "127.0.0.1", port: int = 0) -> None:
        self.behaviour = behaviour
        self.hits: dict[str, int] = {}
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self.host, self.port = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakePod:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = next((int(v) for k, _, v in (h.partition(": ") for h in lines[1:])
                               if k.lower() == "content-length"), 0)  # fmt: skip
                while len(body) < length:
                    body += conn.recv(65536)
                self.hits[path] = self.hits.get(path, 0) + 1
                self.behaviour(Request(conn, method, path, body, self._stop))
            except OSError:
                pass  # the client hung up on us: that is what a capped read does


def models_body(names: list[str], base: str = BASE) -> dict[str, Any]:
    data = [{"id": base, "object": "model", "root": "/models/base", "parent": None}]
    data += [{"id": n, "object": "model", "root": f"/adapters/{n}", "parent": base} for n in names]
    return {"object": "list", "data": data}


def well_behaved(state: dict[str, str] | None = None) -> Behaviour:
    """The runtime LoRA API of a vLLM server, in memory."""
    adapters = state if state is not None else {}

    def behave(r: Request) -> None:
        if r.path == "/v1/models":
            body = models_body(sorted(adapters))
            for entry in body["data"][1:]:
                entry["root"] = adapters[entry["id"]]
            r.reply(200, body)
        elif r.path == "/v1/load_lora_adapter":
            adapters[r.json()["lora_name"]] = r.json()["lora_path"]
            r.reply(200, b"Success")
        elif r.path == "/v1/unload_lora_adapter":
            adapters.pop(r.json()["lora_name"], None)
            r.reply(200, b"Success")
        else:
            r.reply(404, {"detail": "Not Found"})

    return behave


def fails_to_load(name: str, status: int, message: str, state: dict[str, str] | None = None) -> Behaviour:
    """well_behaved, except that loading adapter `name` is answered `status` with vLLM's error shape."""
    good = well_behaved(state)

    def behave(r: Request) -> None:
        if r.path == "/v1/load_lora_adapter" and r.json().get("lora_name") == name:
            r.reply(status, {"error": {"message": message}})
        else:
            good(r)

    return behave


def stream(
    r: Request, status: int, total: int, *, declare: bool = True, chunk: bytes = b"x" * (1 << 20)
) -> None:
    """``total`` bytes of body, produced as they are sent (the server holds one chunk, not the body); without
    ``declare`` no Content-Length says how much is coming."""
    r.head(status, {"Content-Type": "application/json"}, total if declare else None)
    sent = 0
    while sent < total:
        r.conn.sendall(chunk[: total - sent])
        sent += len(chunk)


def huge_everything(total: int = 400 << 20) -> Behaviour:
    return lambda r: stream(r, 200 if r.path == "/v1/models" else 500, total, declare=False)


def huge_error_on_load(total: int = 400 << 20, state: dict[str, str] | None = None) -> Behaviour:
    good = well_behaved(state)
    return lambda r: stream(r, 500, total) if r.path == "/v1/load_lora_adapter" else good(r)


def drip(interval_s: float = 0.5) -> Behaviour:
    """Headers at once, then a byte now and then: never a whole answer."""

    def behave(r: Request) -> None:
        r.head(200, {"Content-Type": "application/json"})
        while not r.stop.wait(interval_s):
            r.conn.sendall(b" ")

    return behave


def stall(seconds: float = 120.0) -> Behaviour:
    def behave(r: Request) -> None:
        r.stop.wait(seconds)

    return behave


def redirect_to(url: str) -> Behaviour:
    return lambda r: r.reply(302, b"", {"Location": url + r.path})


def invalid_utf8(state: dict[str, str] | None = None) -> Behaviour:
    """Model names and error messages that are not UTF-8, with terminal escapes and newlines in them."""
    good = well_behaved(state)

    def behave(r: Request) -> None:
        if r.path == "/v1/models":
            body = json.dumps(models_body(["good"])).encode()
            r.reply(200, body.replace(b'"good"', b'"g\xff\xfe\\u001b[31mX\\n"'))
        elif r.path == "/v1/load_lora_adapter":
            r.reply(400, b'{"error": {"message": "\xff\xfe bad \x1b[2J\x07\\n\\r' + b"A" * 5000 + b'"}}')
        else:
            good(r)

    return behave


def listing(names: int) -> Behaviour:
    """A /v1/models with ``names`` adapters that nobody asked for; unloads succeed (and change nothing)."""
    body = json.dumps(models_body([f"x{i}" for i in range(names)])).encode()

    def behave(r: Request) -> None:
        r.reply(200, body) if r.path == "/v1/models" else r.reply(200, b"Success")

    return behave


def errors_500() -> Behaviour:
    return lambda r: r.reply(500, {"error": {"message": "Internal Server Error\n" + "trace " * 5000}})


def gzip_bomb(size: int = 200 << 20) -> Behaviour:
    """A few hundred KiB that inflate to ``size`` bytes."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as gz:
        for _ in range(size >> 20):
            gz.write(bytes(1 << 20))
    bomb = out.getvalue()
    return lambda r: r.reply(200, bomb, {"Content-Encoding": "gzip"})
