"""The only code that talks to the API server: server-side apply, reads, status patches and Events."""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config

from tuneops import __version__, backoff, labels, metrics
from tuneops.kube.types import (
    CONFIGMAP,
    CRD,
    CUSTOM,
    DEPLOYMENT,
    EVENT,
    FINETUNEDMODEL,
    INFERENCESERVICE,
    JOB,
    LWS,
    NETWORKPOLICY,
    NODE,
    PDB,
    PDB_BETA,
    POD,
    QUANTIZATIONJOB,
    SECRET,
    SERVICE,
    TYPES,
    ResourceType,
    type_of,
)

__all__ = [
    "CONFIGMAP", "CRD", "CUSTOM", "DEPLOYMENT", "EVENT", "FINETUNEDMODEL", "INFERENCESERVICE", "JOB", "LWS",
    "NETWORKPOLICY", "NODE", "PDB", "PDB_BETA", "POD", "QUANTIZATIONJOB", "SECRET", "SERVICE", "TYPES", "ApiError", "Kube",
    "NotFound", "ResourceType", "RetryPolicy", "event_body", "retry_after_seconds", "type_of",
]  # fmt: skip

log = logging.getLogger(__name__)

API_RETRIES = metrics.API_RETRIES
API_GIVEUPS = metrics.API_GIVEUPS


class ApiError(Exception):
    """The API server refused a request; `status` is the HTTP code (404, 409 conflict, 422 invalid, 429, 5xx)."""

    def __init__(self, status: int, method: str, path: str, body: str):
        self.status = status
        self.body = body
        self.reason = ""
        try:
            parsed = json.loads(body)
            detail = parsed.get("message", body)
            self.reason = str(parsed.get("reason") or "")
        except (ValueError, AttributeError):
            detail = body
        super().__init__(f"{method} {path}: HTTP {status}: {str(detail)[:500]}")


class NotFound(ApiError):
    """The object does not exist (HTTP 404)."""

    def __init__(self, method: str, path: str, body: str = ""):
        super().__init__(404, method, path, body)


# Codes worth another try: a conflict (the object moved under us; apply and merge patches carry no
# resourceVersion, so the next try goes through), throttling, and the server or a proxy being briefly away.
RETRY_CODES = frozenset({409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: exponential backoff with full jitter, at most `attempts` tries and `budget_s` seconds.

    Bounded so that one reconcile never hangs on a sick API server: when the budget is spent the error goes
    up to the handler, which retries the whole reconcile later with its own backoff.
    """

    attempts: int = 6
    base_s: float = 0.2
    cap_s: float = 5.0
    budget_s: float = 30.0
    timeout_s: float = 30.0
    """Per-request timeout (connect + read); a stalled request counts as a transient failure."""

    @classmethod
    def from_environment(cls) -> RetryPolicy:
        env = os.environ
        return cls(
            attempts=int(env.get("TUNEOPS_API_ATTEMPTS", cls.attempts)),
            budget_s=float(env.get("TUNEOPS_API_RETRY_BUDGET_SECONDS", cls.budget_s)),
            timeout_s=float(env.get("TUNEOPS_API_TIMEOUT_SECONDS", cls.timeout_s)),
        )

    @classmethod
    def once(cls) -> RetryPolicy:
        """No retries: for callers that poll or re-list on their own (the local node, the CLI)."""
        return cls(attempts=1)

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (retries from many workers spread out)."""
        return backoff.delay(attempt, self.base_s, self.cap_s, full=True, rng=rng)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The Retry-After header as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Transient(Exception):
    def __init__(self, cause: str, error: Exception, retry_after: float | None = None):
        super().__init__(str(error))
        self.cause = cause
        self.error = error
        self.retry_after = retry_after


class Kube:
    """A small synchronous client over the kubernetes package's ApiClient (run it in a thread from async code).

    Every request is retried on transient failures (see RetryPolicy); writes are safe to repeat because
    they are server-side applies and merge patches of a complete desired state. One client serves the
    operator and the local node (which also binds Pods, writes their status and watches collections).
    """

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        user_agent: str = f"tuneops/{__version__}",
    ):
        self.api = api_client or client.ApiClient()
        self.api.user_agent = user_agent
        self.retry = retry or RetryPolicy.from_environment()
        self._sleep = sleep
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster config when running in a Pod, else KUBECONFIG / ~/.kube/config."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        return cls(client.ApiClient())

    @classmethod
    def from_kubeconfig(
        cls, path: Path | str | None, user_agent: str, retry: RetryPolicy | None = None
    ) -> Kube:
        """A client for the API server a kubeconfig names (the local node's and the CLI's: no retries)."""
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(path) if path else None, client_configuration=cfg
        )
        cfg.retries = False  # failures reach the caller at once; the retry policy decides about more
        cfg.connection_pool_maxsize = 16  # a Pod worker each, plus the long-lived watches
        return cls(client.ApiClient(cfg), retry=retry or RetryPolicy.once(), user_agent=user_agent)

    @property
    def host(self) -> str:
        """The API server's base URL."""
        return str(self.api.configuration.host).rstrip("/")

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One logical request: retried with backoff and jitter on transient failures, within the budget."""
        policy = self.retry
        deadline = time.monotonic() + policy.budget_s
        attempt = 0
        while True:
            try:
                return self._once(method, path, body, query, content_type)
            except _Transient as t:
                attempt += 1
                wait = policy.delay(attempt)
                if t.retry_after is not None:
                    wait = max(wait, t.retry_after)  # the server knows best when it can take more
                if attempt >= policy.attempts or time.monotonic() + wait > deadline:
                    API_GIVEUPS.labels(cause=t.cause).inc()
                    level = logging.WARNING if policy.attempts > 1 else logging.DEBUG
                    log.log(level, "%s %s: giving up after %d attempt(s): %s", method, path, attempt, t.error)
                    raise t.error from None
                API_RETRIES.labels(cause=t.cause).inc()
                log.info("%s %s: %s; retry %d in %.2fs", method, path, t.error, attempt, wait)
                self._sleep(wait)

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        query: list[tuple[str, str]] | None,
        content_type: str,
        timeout: tuple[float, float],
    ) -> Any:
        # Bodies stay dicts: the client serialises JSON and structured YAML (apply) content types itself.
        _, url, headers, payload, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api.call_api(method, url, header_params=headers, body=payload, _request_timeout=timeout)

    def _once(
        self, method: str, path: str, body: Any, query: list[tuple[str, str]] | None, content_type: str
    ) -> Any:
        timeout = self.retry.timeout_s
        try:
            response = self._send(method, path, body, query, content_type, (timeout, timeout))
            data: bytes = response.read()
        except urllib3.exceptions.HTTPError as exc:
            # A POST that may have reached the server is not repeated (it would create a second object);
            # one that never connected is.
            never_sent = isinstance(
                exc, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
            ) or (
                isinstance(exc, urllib3.exceptions.MaxRetryError)
                and isinstance(
                    exc.reason, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
                )
            )
            if method == "POST" and not never_sent:
                raise
            raise _Transient("timeout" if "timed out" in str(exc).lower() else "connection", exc) from exc
        if response.status == 404:
            raise NotFound(method, path, data.decode(errors="replace") if data else "")
        if response.status >= 400:
            error = ApiError(response.status, method, path, data.decode(errors="replace") if data else "")
            if self._retryable(method, response.status, error):
                header = response.headers.get("Retry-After") if response.headers else None
                raise _Transient(str(response.status), error, retry_after_seconds(header))
            raise error
        return json.loads(data) if data else None

    @staticmethod
    def _retryable(method: str, status: int, error: ApiError) -> bool:
        if status not in RETRY_CODES:
            return False
        if status == 409 and error.reason == "AlreadyExists":
            return False  # a create that already happened; repeating it cannot succeed
        # A POST answered 5xx may have been carried out; only throttling (not processed) is safe to repeat.
        return method != "POST" or status in (429, 503)

    # ----- reads ------------------------------------------------------------------------------------

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("GET", rtype.item(namespace, name))
        except NotFound:
            return None
        return obj

    def collection(
        self, rtype: ResourceType, namespace: str | None, selector: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The List object itself: its items and the resourceVersion a watch starts from."""
        query = []
        if selector:
            query.append(("labelSelector", _selector(selector)))
        result: dict[str, Any] = self._call("GET", rtype.collection(namespace), query=query)
        return result

    def list(
        self, rtype: ResourceType, namespace: str | None, selector: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.collection(rtype, namespace, selector).get("items") or []
        for item in items:
            item.setdefault("apiVersion", rtype.api_version)
            item.setdefault("kind", rtype.kind)
        return items

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        resource_version: str,
        timeout_s: int = 60,
        selector: Mapping[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Watch events (type + object) from `resource_version` until the server ends the stream."""
        path = rtype.collection(namespace)
        query = [("watch", "true"), ("resourceVersion", resource_version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_s))]  # fmt: skip
        if selector:
            query.append(("labelSelector", _selector(selector)))
        response = self._send("GET", path, None, query, "application/json", (5.0, timeout_s + 15.0))
        stream = response.response
        try:
            if response.status >= 400:
                raise ApiError(response.status, "WATCH", path, stream.read().decode(errors="replace"))
            buffer = b""
            for chunk in stream.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            stream.release_conn()

    def server_version(self) -> tuple[int, int]:
        info: dict[str, Any] = self._call("GET", "/version")
        major = int("".join(ch for ch in str(info.get("major", "1")) if ch.isdigit()) or 1)
        minor = int("".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or 0)
        return major, minor

    # ----- writes -----------------------------------------------------------------------------------

    def apply(self, obj: dict[str, Any], field_manager: str = labels.FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (the one write verb for children)."""
        rtype = type_of(obj)
        meta = obj["metadata"]
        out: dict[str, Any] = self._call(
            "PATCH",
            rtype.item(meta.get("namespace"), meta["name"]),
            body=obj,
            query=[("fieldManager", field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        self._written(out)
        return out

    def create(
        self, rtype: ResourceType, namespace: str | None, body: dict[str, Any], subresource_of: str = ""
    ) -> dict[str, Any]:
        """POST a new object, or a subresource of object `subresource_of` (a Pod's `binding`)."""
        path = rtype.collection(namespace)
        if subresource_of:
            path = f"{rtype.item(namespace, subresource_of)}/{str(body['kind']).lower()}"
        out: dict[str, Any] = self._call("POST", path, body=body)
        self._written(out)
        return out

    def request_token(
        self,
        namespace: str,
        service_account: str,
        audiences: builtins.list[str],
        seconds: int,
        pod: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """A TokenRequest for a ServiceAccount, bound to `pod` when given (what a kubelet asks for a projected
        token: it stops working when the Pod is deleted)."""
        spec: dict[str, Any] = {"audiences": audiences, "expirationSeconds": seconds}
        if pod is not None:
            meta = pod.get("metadata") or {}
            ref = {"apiVersion": "v1", "kind": "Pod", "name": meta.get("name"), "uid": meta.get("uid")}
            spec["boundObjectRef"] = ref
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        out: dict[str, Any] = self._call("POST", path, body=body)
        return out

    def replace(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT a whole object (it carries the resourceVersion it replaces)."""
        meta = obj["metadata"]
        out: dict[str, Any] = self._call("PUT", rtype.item(meta.get("namespace"), meta["name"]), body=obj)
        self._written(out)
        return out

    def patch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        body: dict[str, Any],
        subresource: str = "",
        strategic: bool = False,
    ) -> dict[str, Any]:
        """A merge patch (lists replaced whole), or a strategic one (lists merged by key, as a kubelet sends)."""
        path = rtype.item(namespace, name) + (f"/{subresource}" if subresource else "")
        kind = "strategic-merge-patch" if strategic else "merge-patch"
        out: dict[str, Any] = self._call("PATCH", path, body=body, content_type=f"application/{kind}+json")
        self._written(out)
        return out

    def patch_status(
        self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource. Lists (conditions) are replaced whole, as computed."""
        return self.patch(rtype, namespace, name, {"status": status}, subresource="status")

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        propagation: str = "Background",
        grace_seconds: int | None = None,
        uid: str | None = None,
    ) -> None:
        """Delete if present; `uid` makes it delete only that incarnation of the name (else HTTP 409)."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        with contextlib.suppress(NotFound):
            self._call("DELETE", rtype.item(namespace, name), body=body)
        self._deleted(rtype, namespace, name)

    def _written(self, obj: dict[str, Any]) -> None:
        """Every write's answer (the object as stored) passes here; a client that keeps copies keeps it."""

    def _deleted(self, rtype: ResourceType, namespace: str | None, name: str) -> None:
        """Every delete passes here; a client that keeps copies drops its copy."""

    def event(
        self,
        involved: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: dt.datetime | None = None,
    ) -> None:
        """Record a core/v1 Event on a resource (what `kubectl describe` shows). Never fails the caller."""
        body = event_body(involved, type_, reason, message, now)
        try:
            self.create(EVENT, body["metadata"]["namespace"], body)
        except Exception as exc:  # an Event is advisory; losing one must not stop a reconcile
            log.warning("could not record event %s on %s: %s", reason, involved["metadata"]["name"], exc)


def _selector(selector: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def event_body(
    involved: dict[str, Any],
    type_: str,
    reason: str,
    message: str,
    now: dt.datetime | None = None,
    source: Mapping[str, str] | None = None,
    reporting: tuple[str, str | None] = ("tuneops", None),
) -> dict[str, Any]:
    """A core/v1 Event about `involved`, from the operator unless `source` and `reporting` (component,
    instance) name another one."""
    meta = involved["metadata"]
    namespace = meta.get("namespace") or "default"
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": namespace,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": dict(source or {"component": "tuneops"}),
        "reportingComponent": reporting[0],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    if reporting[1]:
        body["reportingInstance"] = reporting[1]
    return body
