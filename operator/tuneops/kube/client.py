"""The only code that talks to the API server: server-side apply, reads, status patches and Events."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from tuneops import labels

log = logging.getLogger(__name__)


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
        try:
            detail = json.loads(body).get("message", body)
        except ValueError:
            detail = body
        super().__init__(f"{method} {path}: HTTP {status}: {str(detail)[:500]}")


class Kube:
    """A small synchronous client over the kubernetes package's ApiClient (run it in a thread from async code)."""

    def __init__(self, api_client: client.ApiClient | None = None):
        self.api = api_client or client.ApiClient()
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
        # Bodies stay dicts: the client serialises JSON and structured YAML (apply) content types itself.
        _, url, headers, payload, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(method, url, header_params=headers, body=payload, _request_timeout=60)
        data: bytes = response.read()  # type: ignore[no-untyped-call]
        if response.status == 404:
            raise NotFound(path)
        if response.status >= 400:
            raise ApiError(response.status, method, path, data.decode(errors="replace") if data else "")
        return json.loads(data) if data else None

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
