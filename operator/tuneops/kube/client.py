"""The only code that talks to the API server: server-side apply, reads, status patches and Events."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client, config

from tuneops import __version__, labels, metrics

log = logging.getLogger(__name__)

API_RETRIES = metrics.API_RETRIES
API_GIVEUPS = metrics.API_GIVEUPS


@dataclass(frozen=True)
class ResourceType:
    """Where a kind lives in the REST API."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True

    def collection(self, namespace: str | None) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"

    def item(self, namespace: str | None, name: str) -> str:
        return f"{self.collection(namespace)}/{name}"


JOB = ResourceType("batch/v1", "Job", "jobs")
POD = ResourceType("v1", "Pod", "pods")
SERVICE = ResourceType("v1", "Service", "services")
CONFIGMAP = ResourceType("v1", "ConfigMap", "configmaps")
SECRET = ResourceType("v1", "Secret", "secrets")
EVENT = ResourceType("v1", "Event", "events")
DEPLOYMENT = ResourceType("apps/v1", "Deployment", "deployments")
PDB = ResourceType("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
PDB_BETA = ResourceType("policy/v1beta1", "PodDisruptionBudget", "poddisruptionbudgets")
LWS = ResourceType("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets")
FINETUNEDMODEL = ResourceType("tuneops.io/v1alpha1", "FineTunedModel", "finetunedmodels")
QUANTIZATIONJOB = ResourceType("tuneops.io/v1alpha1", "QuantizationJob", "quantizationjobs")
INFERENCESERVICE = ResourceType("tuneops.io/v1alpha1", "InferenceService", "inferenceservices")

TYPES: dict[tuple[str, str], ResourceType] = {
    (t.api_version, t.kind): t
    for t in (JOB, POD, SERVICE, CONFIGMAP, EVENT, DEPLOYMENT, PDB, PDB_BETA, LWS, FINETUNEDMODEL, QUANTIZATIONJOB,
              INFERENCESERVICE)
}  # fmt: skip


def type_of(obj: dict[str, Any]) -> ResourceType:
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key not in TYPES:
        raise KeyError(f"no REST mapping for {key[0]} {key[1]}")
    return TYPES[key]


class NotFound(Exception):
    """The object does not exist."""


class ApiError(Exception):
    """The API server refused a request; `status` is the HTTP code (409 conflict, 422 invalid, 429, 5xx)."""

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

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (retries from many workers spread out)."""
        return float(rng()) * min(self.cap_s, self.base_s * float(2**attempt))


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
    they are server-side applies and merge patches of a complete desired state.
    """

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.api = api_client or client.ApiClient()
        self.api.user_agent = f"tuneops/{__version__}"
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
                    log.warning("%s %s: giving up after %d attempt(s): %s", method, path, attempt, t.error)
                    raise t.error from None
                API_RETRIES.labels(cause=t.cause).inc()
                log.info("%s %s: %s; retry %d in %.2fs", method, path, t.error, attempt, wait)
                self._sleep(wait)

    def _once(
        self, method: str, path: str, body: Any, query: list[tuple[str, str]] | None, content_type: str
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
        timeout = self.retry.timeout_s
        try:
            response = self.api.call_api(
                method, url, header_params=headers, body=payload, _request_timeout=(timeout, timeout)
            )
            data: bytes = response.read()  # type: ignore[no-untyped-call]
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
            raise NotFound(path)
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

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("GET", rtype.item(namespace, name))
        except NotFound:
            return None
        return obj

    def list(
        self, rtype: ResourceType, namespace: str | None, selector: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        query = []
        if selector:
            query.append(("labelSelector", ",".join(f"{k}={v}" for k, v in sorted(selector.items()))))
        result: dict[str, Any] = self._call("GET", rtype.collection(namespace), query=query)
        items: list[dict[str, Any]] = result.get("items") or []
        for item in items:
            item.setdefault("apiVersion", rtype.api_version)
            item.setdefault("kind", rtype.kind)
        return items

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply with the operator's field manager (the one write verb for children)."""
        rtype = type_of(obj)
        meta = obj["metadata"]
        out: dict[str, Any] = self._call(
            "PATCH",
            rtype.item(meta.get("namespace"), meta["name"]),
            body=obj,
            query=[("fieldManager", labels.FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return out

    def patch_status(
        self, rtype: ResourceType, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource. Lists (conditions) are replaced whole, as computed."""
        out: dict[str, Any] = self._call(
            "PATCH",
            rtype.item(namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
        )
        return out

    def delete(
        self, rtype: ResourceType, namespace: str | None, name: str, propagation: str = "Background"
    ) -> None:
        with contextlib.suppress(NotFound):
            self._call(
                "DELETE",
                rtype.item(namespace, name),
                body={"propagationPolicy": propagation},
            )

    def server_version(self) -> tuple[int, int]:
        info: dict[str, Any] = self._call("GET", "/version")
        major = int("".join(ch for ch in str(info.get("major", "1")) if ch.isdigit()) or 1)
        minor = int("".join(ch for ch in str(info.get("minor", "0")) if ch.isdigit()) or 0)
        return major, minor

    def event(
        self,
        involved: dict[str, Any],
        type_: str,
        reason: str,
        message: str,
        now: dt.datetime | None = None,
    ) -> None:
        """Record a core/v1 Event on a resource (what `kubectl describe` shows). Never fails the caller."""
        meta = involved["metadata"]
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "tuneops"},
            "reportingComponent": "tuneops",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self._call("POST", EVENT.collection(meta["namespace"]), body=body)
        except Exception as exc:  # an Event is advisory; losing one must not stop a reconcile
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)
