"""The objects around the server Pods: rollout strategy, Deployment, Service, PodDisruptionBudget, NetworkPolicy,
the result."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from tuneops.api.conditions import ROLLOUT, SECURED, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.names import metadata, selector_labels
from tuneops.render.serving.loader import needs_loader
from tuneops.render.serving.pod import extra_labels
from tuneops.render.serving.types import CONTAINER, SERVER, Note, ServingRender, service_url, workload_name
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


def protection(manifests: Sequence[Manifest], *, key_env: str, runtime_api: bool, multinode: bool) -> Note:
    """What keeps strangers off the server, read from the rendered manifests rather than the spec: the API key
    the server container actually gets (`key_env` from a Secret, or a non-empty value), and a NetworkPolicy that
    actually fences the Pods. The runtime LoRA API (load and unload adapters) needs one of the two; a multi-node
    group needs the policy whatever the key, since its Ray ports take no key."""
    containers = list(_server_containers(manifests))
    sources = {_key_source(c, key_env) for c in containers}
    keyed = bool(containers) and None not in sources
    policy = next((m for m in manifests if m.get("kind") == "NetworkPolicy"), None)
    fenced = policy is not None and _fences(policy)
    admitted = _admitted(policy) if policy is not None else []
    if multinode and not fenced:
        return Note(
            SECURED,
            "False",
            Reason.UNPROTECTED,
            "the group's Ray ports take no key and no NetworkPolicy fences them to the group's own Pods",
        )
    ray = "; a NetworkPolicy keeps the Ray ports to the group's own Pods" if multinode else ""
    if keyed:
        return Note(
            SECURED,
            "True",
            Reason.API_KEY,
            f"clients and the operator send the API key of {', '.join(sorted(map(str, sources)))} ({key_env}){ray}",
        )
    if runtime_api:
        if fenced and admitted:
            return Note(
                SECURED,
                "True",
                Reason.NETWORK_POLICY,
                "runtime LoRA loading has no API key: a NetworkPolicy "
                f"admits only Pods in {', '.join(admitted)} (spec.clientNamespaces; or set apiKeySecretRef){ray}",
            )
        return Note(
            SECURED,
            "False",
            Reason.UNPROTECTED,
            "runtime LoRA loading is on with neither an API key nor a NetworkPolicy: anyone who reaches the port "
            "can load and unload adapters (set apiKeySecretRef)",
        )
    return Note(
        SECURED,
        "True",
        Reason.NO_RUNTIME_API,
        "no runtime LoRA API is served; clients need no key (set apiKeySecretRef to require one)" + ray,
    )


def _server_containers(manifests: Sequence[Manifest]) -> Iterator[Mapping[str, Any]]:
    for m in manifests:
        spec = m.get("spec") or {}
        if m.get("kind") == "Deployment":
            templates = [spec.get("template") or {}]
        elif m.get("kind") == "LeaderWorkerSet":
            lws = spec.get("leaderWorkerTemplate") or {}
            templates = [lws.get("leaderTemplate") or {}, lws.get("workerTemplate") or {}]
        else:
            continue
        for t in templates:
            for c in (t.get("spec") or {}).get("containers") or []:
                if c.get("name") == CONTAINER:
                    yield c


def _key_source(container: Mapping[str, Any], key_env: str) -> str | None:
    """Where the container's API key comes from ("Secret <name>", or "a value"); None when it gets none."""
    for e in container.get("env") or []:
        if e.get("name") != key_env:
            continue
        ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
        if ref.get("name") and ref.get("key"):
            return f"Secret {ref['name']}"
        return "a value" if e.get("value") else None
    return None


def _fences(policy: Mapping[str, Any]) -> bool:
    """Every ingress rule names its sources (no rule admits everyone on every port)."""
    rules = (policy.get("spec") or {}).get("ingress") or []
    return "Ingress" in (policy.get("spec") or {}).get("policyTypes", []) and all(
        r.get("from") or r.get("ports") for r in rules
    )


def _admitted(policy: Mapping[str, Any]) -> list[str]:
    for rule in (policy.get("spec") or {}).get("ingress") or []:
        for peer in rule.get("from") or []:
            for expr in (peer.get("namespaceSelector") or {}).get("matchExpressions") or []:
                if expr.get("key") == NAMESPACE_NAME_LABEL:
                    return list(expr.get("values") or [])
    return []


def admitted_namespaces(spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig) -> list[str]:
    extra = [config.operator_namespace] if config.operator_namespace else []
    return sorted({owner.namespace, *extra, *(spec.client_namespaces or [])})


def network_policy(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    selector: Mapping[str, str],
    *,
    open_http: bool,
) -> Manifest:
    """Ingress to the server Pods on the http port only, from the admitted namespaces (or from anywhere when
    `open_http`: an API key guards it), and on every port between the Pods themselves (a LeaderWorkerSet's group
    talks over Ray, whose ports take no key). Kubelet probes are not subject to it."""

    def pods() -> dict[str, Any]:
        return {"matchLabels": dict(sorted(selector.items()))}

    http = {"port": "http", "protocol": "TCP"}
    operator = {
        "matchExpressions": [
            {
                "key": NAMESPACE_NAME_LABEL,
                "operator": "In",
                "values": [config.operator_namespace or owner.namespace],
            }
        ]
    }
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
            "ingress": [
                {"ports": [http]}
                if open_http
                else {"from": [{"namespaceSelector": namespaces}], "ports": [http]},
                {"from": [{"podSelector": pods()}]},
                *(
                    # the adapter loader's sync API: the operator's namespace only
                    [
                        {
                            "from": [{"namespaceSelector": operator}],
                            "ports": [{"port": "loader", "protocol": "TCP"}],
                        }
                    ]
                    if needs_loader(spec) and config.operator_namespace
                    else []
                ),
            ],
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
    key_env: str,
    service_selector: Mapping[str, str] | None = None,
    runtime_api: bool = False,
    multinode: bool = False,
) -> ServingRender:
    """The result: `manifests` then the workload, its Service, a PodDisruptionBudget when replicated, and a
    NetworkPolicy when the runtime LoRA API (`runtime_api`) has no API key in front of it or the workload is a
    multi-node group (Ray)."""
    selector = selector_labels(owner, SERVER)
    out = [*manifests, workload, service(spec, owner, service_selector or selector)]
    # An autoscaled service keeps its PDB while it may grow, rather than gaining and losing it as replicas move.
    if spec.replicas > 1 or (spec.autoscaling is not None and spec.autoscaling.max_replicas > 1):
        out.append(pdb(owner, selector, config))
    keyless_api = runtime_api and spec.api_key_secret_ref is None
    if keyless_api or multinode:
        out.append(network_policy(spec, owner, config, selector, open_http=not keyless_api))
    secured = protection(out, key_env=key_env, runtime_api=runtime_api, multinode=multinode)
    return ServingRender(
        manifests=tuple(out),
        notes=(note, secured),
        selector=selector,
        url=service_url(spec, owner, config),
        served_models=served_models,
        workload_kind=workload["kind"],
        workload_name=workload_name(owner),
    )
