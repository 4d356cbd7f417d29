"""The objects around the server Pods: rollout strategy, Deployment, Service, PodDisruptionBudget, the result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneops.api.conditions import ROLLOUT, Reason
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
) -> ServingRender:
    """The result: `manifests` then the workload, its Service, and a PodDisruptionBudget when replicated."""
    selector = selector_labels(owner, SERVER)
    out = [*manifests, workload, service(spec, owner, service_selector or selector)]
    if spec.replicas > 1:
        out.append(pdb(owner, selector, config))
    return ServingRender(
        manifests=tuple(out),
        notes=(note,),
        selector=selector,
        url=service_url(spec, owner, config),
        served_models=served_models,
        workload_kind=workload["kind"],
        workload_name=workload_name(owner),
    )
