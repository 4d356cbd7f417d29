"""The API client's retries: which failures are retried, backoff with jitter, Retry-After, and the bounded budget."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from tuneops import API_VERSION
from tuneops.kube import client as k


class Script:
    """Responses a local HTTP server plays in order: (status, headers, body) or ("stall", seconds)."""

    def __init__(self) -> None:
        self.steps: list[tuple[Any, ...]] = []
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()

    def next(self) -> tuple[Any, ...]:
        with self.lock:
            return self.steps.pop(0) if self.steps else (200, {}, {"kind": "Job", "metadata": {"name": "j"}})


@pytest.fixture
def server() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            script.requests.append((self.command, self.path, self.headers.get("User-Agent", "")))
            step = script.next()
            if step[0] == "stall":
                time.sleep(step[1])
                step = (200, {}, {"stalled": True})
            status, headers, body = step
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up on a stalled request, as it should

        do_GET = do_PATCH = do_POST = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield script, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def kube(url: str, **policy: Any) -> tuple[k.Kube, list[float]]:
    cfg = client.Configuration()
    cfg.host = url
    cfg.retries = False  # only the client's own retries are under test
    slept: list[float] = []
    return k.Kube(client.ApiClient(cfg), retry=k.RetryPolicy(**policy), sleep=slept.append), slept


def status(code: int, reason: str = "", headers: dict[str, str] | None = None) -> tuple[Any, ...]:
    return (
        code,
        headers or {},
        {"kind": "Status", "code": code, "reason": reason, "message": f"injected {code}"},
    )


JOB = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}


@pytest.mark.parametrize("code", [409, 429, 500, 502, 503, 504])
def test_transient_codes_are_retried_until_success(server: tuple[Script, str], code: int) -> None:
    script, url = server
    script.steps = [status(code), status(code)]
    api, slept = kube(url)
    assert api.apply(JOB)["metadata"]["name"] == "j"
    assert [r[0] for r in script.requests] == ["PATCH"] * 3
    assert len(slept) == 2


@pytest.mark.parametrize(("code", "reason"), [(400, "BadRequest"), (403, "Forbidden"), (422, "Invalid"),
                                              (409, "AlreadyExists")])  # fmt: skip
def test_permanent_errors_are_not_retried(server: tuple[Script, str], code: int, reason: str) -> None:
    script, url = server
    script.steps = [status(code, reason)]
    api, slept = kube(url)
    with pytest.raises(k.ApiError) as err:
        api.apply(JOB)
    assert err.value.status == code
    assert len(script.requests) == 1 and slept == []


def test_not_found_is_an_answer_not_a_failure(server: tuple[Script, str]) -> None:
    script, url = server
    script.steps = [status(404, "NotFound")]
    api, _ = kube(url)
    assert api.get(k.JOB, "ns", "j") is None
    assert len(script.requests) == 1


def test_the_attempts_are_bounded(server: tuple[Script, str]) -> None:
    script, url = server
    script.steps = [status(500)] * 10
    api, slept = kube(url, attempts=4)
    with pytest.raises(k.ApiError) as err:
        api.get(k.JOB, "ns", "j")
    assert err.value.status == 500
    assert len(script.requests) == 4 and len(slept) == 3


def test_the_time_budget_is_bounded(server: tuple[Script, str]) -> None:
    script, url = server
    # The server asks for 20 s; a 5 s budget gives up rather than wait that long.
    script.steps = [status(429, "TooManyRequests", {"Retry-After": "20"})]
    api, slept = kube(url, budget_s=5.0)
    with pytest.raises(k.ApiError):
        api.get(k.JOB, "ns", "j")
    assert slept == []


def test_retry_after_is_honoured(server: tuple[Script, str]) -> None:
    script, url = server
    script.steps = [status(429, "TooManyRequests", {"Retry-After": "3"})]
    api, slept = kube(url)
    api.get(k.JOB, "ns", "j")
    assert slept and slept[0] >= 3.0


def test_backoff_grows_exponentially_with_full_jitter() -> None:
    policy = k.RetryPolicy(base_s=0.2, cap_s=5.0)
    assert [policy.delay(n, rng=lambda: 1.0) for n in range(1, 7)] == [0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.delay(3, rng=lambda: 0.0) == 0.0
    assert k.retry_after_seconds("7") == 7.0
    assert k.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert k.retry_after_seconds("soon") is None and k.retry_after_seconds(None) is None


def test_a_stalled_request_times_out_and_is_retried(server: tuple[Script, str]) -> None:
    script, url = server
    script.steps = [("stall", 2.0)]
    api, slept = kube(url, timeout_s=0.5)
    started = time.monotonic()
    assert api.get(k.JOB, "ns", "j") == {"kind": "Job", "metadata": {"name": "j"}}
    assert time.monotonic() - started < 2.0
    assert len(slept) == 1 and len(script.requests) == 2


def test_a_post_that_may_have_landed_is_not_repeated(server: tuple[Script, str]) -> None:
    script, url = server
    script.steps = [status(500)]
    api, _ = kube(url)
    obj = {
        "apiVersion": API_VERSION,
        "kind": "FineTunedModel",
        "metadata": {"name": "m", "namespace": "ns"},
    }
    api.event(obj, "Normal", "Succeeded", "done")  # advisory: logged, not raised
    assert [r[0] for r in script.requests] == ["POST"]


def test_requests_say_who_sent_them(server: tuple[Script, str]) -> None:
    script, url = server
    api, _ = kube(url)
    api.get(k.JOB, "ns", "j")
    assert script.requests[0][2].startswith("tuneops/")
