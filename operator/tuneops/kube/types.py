"""Where each kind lives in the REST API: the resource types the operator and the local node address."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneops import API_VERSION
from tuneops.api import KINDS


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
NODE = ResourceType("v1", "Node", "nodes", namespaced=False)
NAMESPACE = ResourceType("v1", "Namespace", "namespaces", namespaced=False)
SERVICE = ResourceType("v1", "Service", "services")
CONFIGMAP = ResourceType("v1", "ConfigMap", "configmaps")
SECRET = ResourceType("v1", "Secret", "secrets")
EVENT = ResourceType("v1", "Event", "events")
DEPLOYMENT = ResourceType("apps/v1", "Deployment", "deployments")
PDB = ResourceType("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets")
PDB_BETA = ResourceType("policy/v1beta1", "PodDisruptionBudget", "poddisruptionbudgets")
LWS = ResourceType("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "leaderworkersets")
NETWORKPOLICY = ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies")
LEASE = ResourceType("coordination.k8s.io/v1", "Lease", "leases")
CRD = ResourceType(
    "apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", namespaced=False
)


def _custom(kind: str) -> ResourceType:
    return ResourceType(API_VERSION, KINDS[kind].kind, KINDS[kind].plural)


FINETUNEDMODEL = _custom("FineTunedModel")
QUANTIZATIONJOB = _custom("QuantizationJob")
INFERENCESERVICE = _custom("InferenceService")
LORAADAPTER = _custom("LoRAAdapter")
CUSTOM: dict[str, ResourceType] = {
    t.kind: t for t in (FINETUNEDMODEL, QUANTIZATIONJOB, INFERENCESERVICE, LORAADAPTER)
}

TYPES: dict[tuple[str, str], ResourceType] = {
    (t.api_version, t.kind): t
    for t in (JOB, POD, NODE, SERVICE, CONFIGMAP, SECRET, EVENT, DEPLOYMENT, PDB, PDB_BETA, LWS, NETWORKPOLICY, CRD,
              *CUSTOM.values())
}  # fmt: skip

# What an InferenceService's autoscaling and routing render: core HPAs, and kinds of other projects' CRDs.
HPA = ResourceType("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
HPA_BETA = ResourceType("autoscaling/v2beta2", "HorizontalPodAutoscaler", "horizontalpodautoscalers")
SCALEDOBJECT = ResourceType("keda.sh/v1alpha1", "ScaledObject", "scaledobjects")
INFERENCEPOOL = ResourceType("inference.networking.k8s.io/v1", "InferencePool", "inferencepools")
HTTPROUTE = ResourceType("gateway.networking.k8s.io/v1", "HTTPRoute", "httproutes")
TYPES.update({(t.api_version, t.kind): t for t in (HPA, HPA_BETA, SCALEDOBJECT, INFERENCEPOOL, HTTPROUTE)})


def type_of(obj: dict[str, Any]) -> ResourceType:
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key not in TYPES:
        raise KeyError(f"no REST mapping for {key[0]} {key[1]}")
    return TYPES[key]
