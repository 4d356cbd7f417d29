"""The objects around the server Pods: rollout strategy, Deployment, Service, PodDisruptionBudget, NetworkPolicy,
the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneops.api.conditions import ROLLOUT, SECURED, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.names import metadata, selector_labels
from tuneops.render.serving.pod import extra_labels
from tuneops.render.serving.types import SERVER, Note, ServingRender, service_url, workload_name
from tuneops.render.types import Manifest, Owner


def rollout(spec: InferenceServiceSpec, config: OperatorConfig, gpus: int) -> tuple[dict[str, Any], Note]:
    """The rolling update parameters, and the condition that tells the user what they mean."""
    if gpus and not config.spare_gpus:
        note = Note(
            ROLLOUT,
            "True",
            Reason.MAX_SURGE_ZERO,
            "no spare GPUs for a surge Pod: rolling updates replace one Pod at a time (maxSurge 0, "
            "maxUnavailable 1)"
            + (
                ", so a single-replica service is unavailable while its new Pod loads"
                if spec.replicas <= 1
                else ""
            ),
        )
        return {"maxSurge": 0, "maxUnavailable": 1}, note
    return {"maxSurge": 1, "maxUnavailable": 0}, Note(
        ROLLOUT, "True", Reason.SURGE_ALLOWED, "rolling updates start a new Pod before stopping an old one"
    )


def workload_metadata(spec: InferenceServiceSpec, owner: Owner) -> dict[str, Any]:
    return metadata(owner, workload_name(owner), SERVER, extra_labels=extra_labels(spec))


def deployment(
    spec: InferenceServiceSpec,
    owner: Owner,
    template: dict[str, Any],
    strategy: dict[str, Any],
    startup_seconds: int,
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": workload_metadata(spec, owner),
        "spec": {
            "progressDeadlineSeconds": startup_seconds + 600,
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner, SERVER)},
            "strategy": {"rollingUpdate": strategy, "type": "RollingUpdate"},
            "template": template,
        },
    }


def service(spec: InferenceServiceSpec, owner: Owner, selector: Mapping[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {
            "ports": [{"name": "http", "port": spec.service.port, "protocol": "TCP", "targetPort": "http"}],
            "selector": dict(sorted(selector.items())),
            "type": spec.service.type,
        },
    }


def pdb(owner: Owner, selector: Mapping[str, str], config: OperatorConfig) -> Manifest:
    # policy/v1 arrived in Kubernetes 1.21; the operator discovers the server version at startup.
    return {
        "apiVersion": "policy/v1" if config.features.pdb_v1 else "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(sorted(selector.items()))}},
    }


NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def protection(spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, runtime_api: bool) -> Note:
    """What keeps strangers off the runtime LoRA API (load and unload adapters): the API key, or else a
    NetworkPolicy while the API is on."""
    if spec.api_key_secret_ref is not None:
        return Note(
            SECURED,
            "True",
            Reason.API_KEY,
            f"clients and the operator send the API key of Secret {spec.api_key_secret_ref.name}",
        )
    if runtime_api:
        admitted = ", ".join(admitted_namespaces(spec, owner, config))
        return Note(
            SECURED,
            "True",
            Reason.NETWORK_POLICY,
            "runtime LoRA loading has no API key: a NetworkPolicy "
            f"admits only Pods in {admitted} (spec.clientNamespaces; or set apiKeySecretRef)",
        )
    return Note(
        SECURED,
        "True",
        Reason.NO_RUNTIME_API,
        "no runtime LoRA API is served; clients need no key (set apiKeySecretRef to require one)",
    )


def admitted_namespaces(spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig) -> list[str]:
    extra = [config.operator_namespace] if config.operator_namespace else []
    return sorted({owner.namespace, *extra, *(spec.client_namespaces or [])})


def network_policy(
    spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, selector: Mapping[str, str]
) -> Manifest:
    """Ingress to the server Pods only from the admitted namespaces, and between the Pods themselves (a
    LeaderWorkerSet's group talks over Ray). Kubelet probes are not subject to it."""

    def pods() -> dict[str, Any]:
        return {"matchLabels": dict(sorted(selector.items()))}

    namespaces = {
        "matchExpressions": [
            {
                "key": NAMESPACE_NAME_LABEL,
                "operator": "In",
                "values": admitted_namespaces(spec, owner, config),
            }
        ]
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {
            "ingress": [{"from": [{"namespaceSelector": namespaces}]}, {"from": [{"podSelector": pods()}]}],
            "podSelector": pods(),
            "policyTypes": ["Ingress"],
        },
    }


def serving_render(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    manifests: Sequence[Manifest],
    workload: Manifest,
    note: Note,
    served_models: tuple[str, ...],
    service_selector: Mapping[str, str] | None = None,
    runtime_api: bool = False,
) -> ServingRender:
    """The result: `manifests` then the workload, its Service, a PodDisruptionBudget when replicated, and a
    NetworkPolicy when the runtime LoRA API (`runtime_api`) has no API key in front of it."""
    selector = selector_labels(owner, SERVER)
    out = [*manifests, workload, service(spec, owner, service_selector or selector)]
    # An autoscaled service keeps its PDB while it may grow, rather than gaining and losing it as replicas move.
    if spec.replicas > 1 or (spec.autoscaling is not None and spec.autoscaling.max_replicas > 1):
        out.append(pdb(owner, selector, config))
    secured = protection(spec, owner, config, runtime_api)
    if secured.reason == Reason.NETWORK_POLICY:
        out.append(network_policy(spec, owner, config, selector))
    return ServingRender(
        manifests=tuple(out),
        notes=(note, secured),
        selector=selector,
        url=service_url(spec, owner, config),
        served_models=served_models,
        workload_kind=workload["kind"],
        workload_name=workload_name(owner),
    )
