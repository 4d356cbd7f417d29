"""A tenant's InferenceService cannot open its runtime LoRA API to strangers, the chart's default RBAC does not
reach beyond the watched namespaces, rendered Pods cannot write their image or fill a node's disk, worker Pods
of a multi-node service cannot keep it from Ready, and no fleet of failing Pods outgrows etcd's object limit.

Each test sets up what an attacker (or an unlucky spec) does and checks it is stopped, through the renderers,
the reconcilers' decision functions and `helm template`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.security import vllm_fakes as fake
from tests.unit.chart_support import (
    find,
    one,
    rule_set,
    template,
)
from tests.unit.render_support import WRITABLE_ENV, containers, env_of, owner, pod_specs
from tests.unit.test_security import all_example_docs
from tuneops.adapters import (
    DesiredAdapter,
    FailureRecord,
    PodMemory,
    PodResult,
    ServedModels,
    plan_pod,
    pod_problems,
    summarize,
)
from tuneops.api.common import ConditionStatus
from tuneops.api.conditions import ADAPTERS_READY, READY, SECURED, Reason, set_condition
from tuneops.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus, PodAdapters
from tuneops.config import OperatorConfig
from tuneops.reconcile.base import Cond, Verdict
from tuneops.reconcile.lora import ready_pods, reconcile_pods
from tuneops.reconcile.service_status import Adapters, Observed, Workload, adapter_states, decide
from tuneops.render import Owner, ResolvedAdapter, ResolvedModel
from tuneops.render.plan import render_documents
from tuneops.render.serving import render_inferenceservice
from tuneops.render.serving.types import ServingRender
from tuneops.render.serving.vllm import LWS_WORKER_INDEX

OPERATOR_NS = "tuneops-system"
MODEL = ResolvedModel(uri="pvc://models/base")
MULTI_NODE = {"vllm": {"nodes": 2, "pipelineParallelSize": 2}, "resources": {"gpus": 1}}


def adapters(n: int, width: int = 1) -> list[ResolvedAdapter]:
    return [ResolvedAdapter(name=f"a{i:03d}".ljust(width, "x"), uri=f"pvc://adapters/a{i}") for i in range(n)]


def lora_service(adapter_refs: Sequence[ResolvedAdapter], **spec: Any) -> InferenceServiceSpec:
    refs = [{"name": a.name, "uri": a.uri} for a in adapter_refs]
    return InferenceServiceSpec.model_validate(
        {"model": {"uri": MODEL.uri}, "lora": {"adapters": refs}, **spec}
    )


def render(
    spec: InferenceServiceSpec, owner_: Owner, adapter_refs: Sequence[ResolvedAdapter]
) -> ServingRender:
    config = OperatorConfig(operator_namespace=OPERATOR_NS)
    return render_inferenceservice(spec, owner_, config, model=MODEL, adapters=adapter_refs)


def conditions(rendered: ServingRender, replicas: int = 1, lora: Adapters | None = None) -> dict[str, Cond]:
    """The conditions the InferenceService reconciler sets for a rolled-out workload and what it rendered."""
    notes = tuple(
        Cond(n.type, None if n.status == "Unknown" else n.status == "True", n.reason, n.message)
        for n in rendered.notes
    )
    workload = Workload(desired=replicas, ready=replicas, updated=replicas)
    verdict = decide(Observed(workload, lora, notes, tuple(rendered.served_models), rendered.url))
    assert isinstance(verdict, Verdict)
    return {c.type: c for c in verdict.conditions}


def kinds(rendered: ServingRender, kind: str) -> list[dict[str, Any]]:
    return [m for m in rendered.manifests if m["kind"] == kind]


# -- 6: runtime LoRA loading behind a LoadBalancer, with no API key ---------------------------------------------


@pytest.mark.parametrize("shape", [{}, MULTI_NODE], ids=["deployment", "leaderworkerset"])
def test_an_open_load_balancer_does_not_open_the_runtime_lora_api(shape: dict[str, Any]) -> None:
    """The attack: a tenant serves adapters with dynamic loading (the default) and no API key on a
    LoadBalancer; anyone reaching the address could POST /v1/load_lora_adapter. Now the server Pods are
    behind a NetworkPolicy that admits Pods of three kinds of namespace only, and no address block."""
    spec = lora_service(adapters(2), service={"type": "LoadBalancer"}, clientNamespaces=["apps"], **shape)
    assert spec.lora is not None and spec.lora.dynamic and spec.api_key_secret_ref is None
    rendered = render(spec, owner("InferenceService", "open", "team-a"), adapters(2))
    assert one(rendered.manifests, "Service")["spec"]["type"] == "LoadBalancer"

    (policy,) = kinds(rendered, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # The policy covers every server Pod the workload makes (leaders and workers alike).
    (workload,) = kinds(rendered, rendered.workload_kind)
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for pod in template_labels(workload):
        assert selected.items() <= pod.items(), (selected, pod)
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert all(set(peer) in ({"namespaceSelector"}, {"podSelector"}) for peer in peers), peers
    (by_namespace,) = [p["namespaceSelector"] for p in peers if "namespaceSelector" in p]
    assert by_namespace == {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": ["apps", "team-a", OPERATOR_NS],
            }
        ]
    }
    assert [p["podSelector"] for p in peers if "podSelector" in p] == [{"matchLabels": selected}]

    secured = conditions(rendered)[SECURED]
    assert (secured.status, secured.reason) == (True, Reason.NETWORK_POLICY)
    for namespace in ("apps", "team-a", OPERATOR_NS, "apiKeySecretRef"):
        assert namespace in secured.message


def template_labels(workload: dict[str, Any]) -> list[dict[str, str]]:
    spec = workload["spec"]
    if "leaderWorkerTemplate" in spec:
        lwt = spec["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"]["metadata"]["labels"], lwt["workerTemplate"]["metadata"]["labels"]]
    labels: dict[str, str] = spec["template"]["metadata"]["labels"]
    return [labels]


def test_with_an_api_key_the_server_reads_it_from_the_secret_and_says_so() -> None:
    spec = lora_service(
        adapters(2), service={"type": "LoadBalancer"}, apiKeySecretRef={"name": "svc-key", "key": "token"}
    )
    rendered = render(spec, owner("InferenceService", "keyed", "team-a"), adapters(2))
    assert not kinds(rendered, "NetworkPolicy")
    (server,) = [c for m in rendered.manifests for c in containers(m) if c["name"] == "server"]
    assert env_of(server)["VLLM_API_KEY"] == {"secretKeyRef": {"name": "svc-key", "key": "token"}}
    # Not on a command line (readable in the Pod spec and /proc), nor in the launcher's ConfigMap.
    assert "--api-key" not in json.dumps(list(rendered.manifests))
    secured = conditions(rendered)[SECURED]
    assert (secured.status, secured.reason) == (True, Reason.API_KEY)
    assert "svc-key" in secured.message


# -- 7: the chart's default RBAC ------------------------------------------------------------------------------

Triple = tuple[str, str, str]


def operator_rights(docs: Sequence[dict[str, Any]], sa: str = "tuneops") -> dict[str | None, set[Triple]]:
    """What the operator's ServiceAccount may do, by namespace (None: in every namespace), as the API server's
    authorizer would read the rendered Roles, ClusterRoles and their bindings."""
    roles = {
        (d["kind"], d["metadata"].get("namespace") if d["kind"] == "Role" else None, d["metadata"]["name"]):
        rule_set(d.get("rules") or [])
        for d in docs if d["kind"] in ("Role", "ClusterRole")
    }  # fmt: skip
    rights: dict[str | None, set[Triple]] = {}
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = b.get("subjects") or []
        if not any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in subjects):
            continue
        where = b["metadata"]["namespace"] if b["kind"] == "RoleBinding" else None
        ref = b["roleRef"]
        role_ns = where if ref["kind"] == "Role" else None
        rights.setdefault(where, set()).update(roles[(ref["kind"], role_ns, ref["name"])])
    return rights


def can(
    rights: Mapping[str | None, set[Triple]], namespace: str, group: str, resource: str, verb: str
) -> bool:
    granted = rights.get(None, set()) | rights.get(namespace, set())
    return any(g in (group, "*") and r in (resource, "*") and v in (verb, "*") for g, r, v in granted)


# What a tenant could turn the operator's rights into, were they granted in its namespace.
RUN_OR_READ: list[Triple] = [
    ("", "secrets", "get"),
    ("", "secrets", "list"),
    ("batch", "jobs", "create"),
    ("apps", "deployments", "create"),
    ("leaderworkerset.x-k8s.io", "leaderworkersets", "create"),
]


def test_default_chart_reaches_only_the_release_namespace_and_reads_no_secrets(tmp_path: Path) -> None:
    docs = template({}, tmp_path, namespace=OPERATOR_NS)
    rights = operator_rights(docs)
    # Nothing cluster-wide: no ClusterRole at all.
    assert set(rights) == {OPERATOR_NS}
    assert not find(docs, "ClusterRole")
    for triple in RUN_OR_READ:
        assert not can(rights, "team-b", *triple), triple
    assert can(rights, OPERATOR_NS, "batch", "jobs", "create")
    assert not can(rights, OPERATOR_NS, "", "secrets", "get")


def test_watched_namespaces_get_roles_and_nothing_else_does(tmp_path: Path) -> None:
    docs = template({"watchNamespaces": ["team-a", "team-c"]}, tmp_path, namespace=OPERATOR_NS)
    rights = operator_rights(docs)
    assert set(rights) == {"team-a", "team-c"}
    assert sorted(r["metadata"]["namespace"] for r in find(docs, "Role")) == ["team-a", "team-c"]
    for namespace in ("team-b", OPERATOR_NS):
        for triple in RUN_OR_READ:
            assert not can(rights, namespace, *triple), (namespace, triple)
    operator = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [a for a in operator["args"] if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-c",
    ]
    assert "--all-namespaces" not in operator["args"] and "-A" not in operator["args"]


def test_cluster_wide_rights_are_an_explicit_choice(tmp_path: Path) -> None:
    rights = operator_rights(template({"rbac": {"scope": "cluster"}}, tmp_path, namespace=OPERATOR_NS))
    assert can(rights, "team-b", "batch", "jobs", "create")
    assert not can(rights, "team-b", "", "secrets", "get")
    broad = template({"rbac": {"scope": "cluster", "readSecrets": True}}, tmp_path, namespace=OPERATOR_NS)
    assert can(operator_rights(broad), "team-b", "", "secrets", "get")


# -- 8: read-only root, bounded scratch -------------------------------------------------------------------------


def example_manifests() -> list[tuple[str, list[dict[str, Any]]]]:
    """Every example in examples/, and a multi-node service (no example has one)."""
    out = [
        (name, render_documents(docs, OperatorConfig(), namespace="demo"))
        for name, docs in all_example_docs()
    ]
    multi = lora_service(adapters(1), **MULTI_NODE)
    out.append(("multi-node", list(render(multi, owner("InferenceService", "lws"), adapters(1)).manifests)))
    return out


def scratch_violations(manifest: dict[str, Any]) -> list[str]:
    """Every way a Pod of `manifest` could write into its image or past a bound onto the node's disk."""
    where = f"{manifest['kind']}/{manifest['metadata']['name']}"
    found = []
    for pod in pod_specs(manifest):
        empty = {v["name"]: v["emptyDir"] for v in pod.get("volumes", []) if "emptyDir" in v}
        found += [
            f"{where}: emptyDir {name} has no sizeLimit"
            for name, e in empty.items()
            if not e.get("sizeLimit")
        ]
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            at = f"{where} container {c['name']}"
            if (c.get("securityContext") or {}).get("readOnlyRootFilesystem") is not True:
                found.append(f"{at}: root filesystem writable")
            if "ephemeral-storage" not in ((c.get("resources") or {}).get("requests") or {}):
                found.append(f"{at}: no ephemeral-storage request")
            writable = [m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])
                        if m["name"] in empty and not m.get("readOnly")]  # fmt: skip
            paths = {
                "/tmp",
                *(str(v) for k, v in env_of(c).items() if k in WRITABLE_ENV and isinstance(v, str)),
            }
            for path in sorted(paths):
                if not any(path == w or path.startswith(w + "/") for w in writable):
                    found.append(f"{at}: {path} is not on a writable scratch mount")
    return found


@pytest.mark.parametrize(("name", "manifests"), example_manifests())
def test_no_rendered_pod_writes_its_image_or_an_unbounded_scratch(
    name: str, manifests: list[dict[str, Any]]
) -> None:
    assert [m for m in manifests if list(pod_specs(m))], f"{name} renders no Pods"
    assert [v for m in manifests for v in scratch_violations(m)] == []


# -- 9: a multi-node service with LoRA -------------------------------------------------------------------------


def lws_pods(
    rendered: ServingRender, groups: int, size: int, leader_ip: str, worker_ip: str
) -> list[dict[str, Any]]:
    """The Pods the LeaderWorkerSet controller makes: each group's leader (worker index 0) and its workers,
    labelled from the rendered templates, all ready."""
    (lws,) = kinds(rendered, "LeaderWorkerSet")
    leader, worker = template_labels(lws)
    pods = []
    for g in range(groups):
        for i in range(size):
            name = f"svc-{g}" if i == 0 else f"svc-{g}-{i}"
            labels = {**(leader if i == 0 else worker), LWS_WORKER_INDEX: str(i)}
            pods.append({
                "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
                "status": {"podIP": leader_ip if i == 0 else worker_ip,
                           "conditions": [{"type": "Ready", "status": "True"}]},
            })  # fmt: skip
    return pods


def test_worker_pods_of_a_leaderworkerset_are_never_asked_for_adapters() -> None:
    """The attack (here an accident): worker Pods run no API server; counting them kept every multi-node LoRA
    service from Ready. The reconciler lists every server Pod (workers match the selector too), then asks only
    the leaders, which the Service selects."""
    refs = adapters(2)
    svc = owner("InferenceService", "multi-node-lora", uid="uid-lws-9")
    rendered = render(lora_service(refs, **MULTI_NODE), svc, refs)
    want = {a.name: DesiredAdapter(name=a.name, path=f"/adapters/{a.name}", digest="") for a in refs}
    served: dict[str, str] = {}
    with (
        fake.FakePod(fake.well_behaved(served)) as leader,
        fake.FakePod(
            lambda r: r.reply(404, {"detail": "Not Found"}), host="127.0.0.3", port=leader.port
        ) as worker,
    ):
        listed = lws_pods(rendered, groups=2, size=3, leader_ip="127.0.0.1", worker_ip="127.0.0.3")
        assert all(rendered.selector.items() <= p["metadata"]["labels"].items() for p in listed)
        service_selector = one(rendered.manifests, "Service")["spec"]["selector"]
        routed = [p["metadata"]["name"] for p in listed
                  if service_selector.items() <= p["metadata"]["labels"].items()]  # fmt: skip
        asked = ready_pods(listed)
        assert [p["metadata"]["name"] for p in asked] == routed == ["svc-0", "svc-1"]

        results = asyncio.run(reconcile_pods(svc, asked, want, None, True, deadline_s=10, port=leader.port))
        summary = summarize(want, results)
        assert summary.ready, summary.message
        assert worker.hits == {}
        assert sorted(served) == ["a000", "a001"]

        # As it was: the workers asked too, answering nothing a vLLM server would, and the service never Ready.
        before = summarize(want, asyncio.run(reconcile_pods(
            svc, listed, want, None, True, deadline_s=10, port=leader.port
        )))  # fmt: skip
        assert not before.ready and worker.hits


# -- 11: status of a large failing fleet ---------------------------------------------------------------------

ETCD_OBJECT_LIMIT = 3 << 19  # 1.5 MiB


def test_512_adapters_failing_on_100_pods_keep_the_status_far_under_etcds_limit() -> None:
    """The attack: a valid spec (512 adapters, the schema's maximum, with 128-character names) on 100 Pods,
    every load failing with a long error and every Pod listing a thousand stale adapters. Listing every
    adapter on every Pod would be tens of MiB; the status the reconciler writes stays under 1 MiB."""
    refs = adapters(512, width=128)
    spec = lora_service(refs, replicas=100)
    svc = owner("InferenceService", "fleet", uid="uid-fleet-11")
    rendered = render(spec, svc, refs)
    want = {a.name: DesiredAdapter(name=a.name, path=f"/adapters/{a.name}", digest=f"sha256:{i:064d}")
            for i, a in enumerate(refs)}  # fmt: skip
    error = "CUDA out of memory; trace: " + "x" * 5000
    stale = {f"stale-{j:04d}".ljust(128, "s"): f"/adapters/stale-{j}" for j in range(1023)}
    listing = ServedModels(base_models=("base",), adapters=stale, parents=dict.fromkeys(stale, "base"))
    results = []
    for p in range(100):
        memory = PodMemory(failures={n: FailureRecord(digest=a.digest, attempts=3, message=error)
                                     for n, a in want.items()})  # fmt: skip
        name = f"fleet-{p:03d}-".ljust(63, "z")
        results.append(PodResult(pod=name, reachable=True, served=listing,
                                 states=plan_pod(want, listing, memory).states))  # fmt: skip
    summary = summarize(want, results)
    assert not summary.ready
    lora = Adapters(summary)
    status = InferenceServiceStatus(
        adapters=adapter_states(lora),
        pods=[PodAdapters(pod=x.pod, ready_adapters=x.ready_adapters, message=x.message)
              for x in pod_problems(want, results)],
        served_models=list(rendered.served_models),
        selector=rendered.selector_string,
        url=rendered.url,
    )  # fmt: skip
    for cond in conditions(rendered, replicas=100, lora=lora).values():
        value: ConditionStatus = "Unknown" if cond.status is None else ("True" if cond.status else "False")
        status.conditions = set_condition(
            status.conditions, cond.type, value, cond.reason, cond.message, 1, "2026-01-01T00:00:00Z"
        )
    assert {c.type: c.reason for c in status.conditions or []}[READY] == Reason.ADAPTER_LOAD_FAILED
    assert ADAPTERS_READY in {c.type for c in status.conditions or []}
    size = len(json.dumps({"status": status.wire()}))
    print(f"status of 512 adapters x 100 failing Pods: {size} bytes")
    assert size < 1 << 20 and size < ETCD_OBJECT_LIMIT, size
    assert len(status.adapters or []) == 512 and len(status.pods or []) <= 10
