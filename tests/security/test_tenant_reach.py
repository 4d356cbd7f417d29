"""A tenant's InferenceService cannot open its runtime LoRA API to strangers, the chart's default RBAC does not
reach beyond the watched namespaces, rendered Pods cannot write their image or fill a node's disk, worker Pods
of a multi-node service cannot keep it from Ready, and no fleet of failing Pods outgrows etcd's object limit.

Each test sets up what an attacker (or an unlucky spec) does and checks it is stopped, through the renderers,
the reconcilers (against an in-memory API server and fake vLLM servers) and `helm template`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import functools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

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
from tests.unit.test_validate_equals_operator import MemoryKube
from tuneops import API_VERSION
from tuneops.adapters import (
    DesiredAdapter,
    FailureRecord,
    PodMemory,
    summarize,
)
from tuneops.adapters.client import EXCERPT_MAX, MAX_ACTIONS_PER_POD
from tuneops.adapters.summary import PODS_NAMED_MAX
from tuneops.api.conditions import ADAPTERS_READY, DEGRADED, READY, SECURED, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec, InferenceServiceStatus
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile import RECONCILERS, lora
from tuneops.reconcile.base import Cond, Context, Verdict
from tuneops.reconcile.lora import ready_pods, reconcile_pods
from tuneops.reconcile.service_status import Adapters, Observed, Workload, decide
from tuneops.render import Owner, ResolvedAdapter, ResolvedModel
from tuneops.render.plan import render_documents
from tuneops.render.serving import adapter_path, render_inferenceservice
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
FLEET_PODS = 100
FLEET_ADAPTERS = 512  # the schema's maximum
STALE = 1023  # with the base model, the most entries of one /v1/models the operator reads
LOAD_ERROR = "CUDA out of memory; trace: " + "x" * 5000


class FleetKube(MemoryKube):
    """The in-memory API server of the operator tests, with what the InferenceService reconciler needs beyond
    it: status kept apart from applies (an apply does not touch status, as on the API server), status patches
    merged into the object."""

    def apply(self, obj: dict[str, Any], field_manager: str = "") -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        current = self.objs.get(key) or {}
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{obj['kind']}-{meta['name']}".lower())
        meta["generation"] = (current.get("metadata") or {}).get("generation", 0) + 1
        if "status" in current:
            obj["status"] = current["status"]
        self.objs[key] = obj
        return copy.deepcopy(obj)

    def patch_status(
        self, rtype: k.ResourceType, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        super().patch_status(rtype, namespace, name, status)
        obj = self.objs[(rtype.kind, namespace, name)]
        merged = {**(obj.get("status") or {}), **status}
        obj["status"] = {key: v for key, v in merged.items() if v is not None}
        return status

    def patch(self, rtype: k.ResourceType, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        obj = self.objs.get((rtype.kind, namespace, name))
        if obj is None:
            raise k.NotFound("PATCH", f"{rtype.kind}/{namespace}/{name}")
        assert set(body) == {"metadata"} and set(body["metadata"]) == {"annotations"}, body
        annotations = obj["metadata"].setdefault("annotations", {})
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return copy.deepcopy(obj)


def fleet_adapters() -> list[ResolvedAdapter]:
    return adapters(FLEET_ADAPTERS, width=128)


def desired() -> dict[str, DesiredAdapter]:
    """The adapters as the reconciler asks the Pods for them (URI adapters have no digest)."""
    config = OperatorConfig(operator_namespace=OPERATOR_NS)
    return {
        a.name: DesiredAdapter(name=a.name, path=adapter_path(a.uri, config), digest="")
        for a in fleet_adapters()
    }


WINDOWS = FLEET_ADAPTERS // MAX_ACTIONS_PER_POD


@contextlib.contextmanager
def fleet(behaviour: fake.Behaviour, size: int) -> Iterator[list[fake.FakePod]]:
    """`size` fake servers on 127.0.1.1, 127.0.1.2, ..., all on one port; stopped together."""
    first = fake.FakePod(behaviour, host="127.0.1.1")
    pods = [first] + [
        fake.FakePod(behaviour, host=f"127.0.1.{i + 1}", port=first.port) for i in range(1, size)
    ]
    for pod in pods:
        pod.__enter__()
    try:
        yield pods
    finally:
        with concurrent.futures.ThreadPoolExecutor(len(pods)) as stopping:
            list(stopping.map(lambda pod: pod.__exit__(None, None, None), pods))


@functools.cache
def earlier_passes(window: int) -> PodMemory:
    """What the reconciler's earlier passes left it remembering of a Pod (in the operator's own memory, by Pod uid):
    every stale adapter's unload failed for good; of the desired adapters, those before the Pod's `window` (of
    MAX_ACTIONS_PER_POD adapters) have failed for good and the rest twice (Pods started at different times). So
    this pass every Pod loads the adapters of its window once more, and they fail for good; between them the first
    32 Pods' windows cover all 512."""
    want = desired()
    names = sorted(want)
    start = window * MAX_ACTIONS_PER_POD
    failures = {n: FailureRecord(target=want[n].path, attempts=3 if i < start else 2, message="")
                for i, n in enumerate(names)}  # fmt: skip
    failures |= {f"stale-{j:04d}": FailureRecord(target="", attempts=3, message="") for j in range(STALE)}
    return PodMemory(failures=failures)


def failing_vllm(r: fake.Request) -> None:
    """A server that lists a thousand adapters nobody asked for and fails every load with a long error."""
    if r.path == "/v1/models":
        r.reply(200, LISTING)
    else:
        r.reply(500, {"error": {"message": LOAD_ERROR}})


LISTING = json.dumps(fake.models_body([f"stale-{j:04d}" for j in range(STALE)])).encode()


def test_512_adapters_failing_on_100_pods_keep_the_status_far_under_etcds_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attack: a valid spec (512 adapters, the schema's maximum, with 128-character names) on 100 Pods,
    every load failing with a long error and every Pod listing a thousand stale adapters. The InferenceService
    reconciler runs against an in-memory API server, and its adapter pass against 100 fake vLLM servers on
    loopback. Listing every adapter on every Pod would be tens of MiB; the status it writes stays under
    1 MiB, every message in it a line, and every Pod's annotation within its bound."""
    refs = fleet_adapters()
    spec = {"model": {"uri": MODEL.uri}, "replicas": FLEET_PODS,
            "lora": {"adapters": [{"name": a.name, "uri": a.uri} for a in refs]}}  # fmt: skip
    obj = {"apiVersion": API_VERSION, "kind": "InferenceService", "spec": spec,
           "metadata": {"name": "fleet", "namespace": "team-a", "uid": "uid-fleet-11", "generation": 1}}  # fmt: skip
    kube = FleetKube([obj])
    woke = threading.Event()
    ctx = Context(kube=cast(k.Kube, kube), config=OperatorConfig(operator_namespace=OPERATOR_NS),
                  wake=lambda *_, **__: woke.set())  # fmt: skip
    reconcile = RECONCILERS["InferenceService"]
    key = ("InferenceService", "team-a", "fleet")

    def status() -> InferenceServiceStatus:
        return InferenceServiceStatus.model_validate(kube.objs[key].get("status") or {})

    # The first pass makes the workload; there are no Pods yet.
    reconcile(ctx, copy.deepcopy(kube.objs[key]))
    (deployment,) = kube.list(k.DEPLOYMENT, "team-a")
    assert status().pods is None

    # The Deployment controller rolls out 100 Pods, all ready; each runs a server that fails every load.
    meta = deployment["metadata"]
    kube.objs[("Deployment", "team-a", meta["name"])]["status"] = {
        "observedGeneration": meta["generation"], "replicas": FLEET_PODS, "readyReplicas": FLEET_PODS,
        "updatedReplicas": FLEET_PODS, "availableReplicas": FLEET_PODS,
    }  # fmt: skip
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    with fleet(failing_vllm, FLEET_PODS) as pods:
        monkeypatch.setitem(
            cast(dict[str, Any], lora.reconcile_pods.__kwdefaults__), "port", pods[0].port
        )  # the fakes', not 8000
        for p in range(FLEET_PODS):
            name = f"fleet-{p:03d}-".ljust(63, "z")
            kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": name, "namespace": "team-a", "uid": f"uid-pod-{p}", "labels": labels,
            }})  # fmt: skip
            kube.objs[("Pod", "team-a", name)]["status"] = {
                "podIP": f"127.0.1.{p + 1}",
                "conditions": [{"type": "Ready", "status": "True"}],
            }

        monkeypatch.setattr(lora, "MEMORIES", lora.Memories())
        lora.MEMORIES._by_service[("team-a", "fleet")] = {
            f"uid-pod-{p}": earlier_passes(p % WINDOWS) for p in range(FLEET_PODS)
        }
        # The reconciler waits a few seconds for the adapter pass; one that takes longer wakes it when done.
        for _ in range(3):
            woke.clear()
            reconcile(ctx, copy.deepcopy(kube.objs[key]))
            if not any("no answer yet" in p.message for p in status().pods or []):
                break
            assert woke.wait(120), "the adapter pass never finished"
        asked = [pod.hits for pod in pods]

    # Each Pod was asked what it serves, before and after its loads; no stale adapter was unloaded again.
    assert all(hits == {"/v1/models": 2, "/v1/load_lora_adapter": MAX_ACTIONS_PER_POD} for hits in asked), (
        asked
    )
    written = status()
    conditions = {c.type: c for c in written.conditions or []}
    # The base model serves: Ready with reason Degraded, and the Degraded condition says what fails.
    assert (conditions[READY].status, conditions[READY].reason) == ("True", Reason.DEGRADED), conditions[
        READY
    ]
    assert conditions[DEGRADED].reason == Reason.ADAPTER_LOAD_FAILED, conditions[DEGRADED]
    assert conditions[ADAPTERS_READY].status == "False"
    # Every adapter failed for good, each reported in a line (its name, where, how often; the error is cut).
    assert len(written.adapters or []) == FLEET_ADAPTERS
    for a in written.adapters or []:
        assert a.state == "Failed" and (a.message or "").startswith(f"adapter {a.name} failed to load on "), a
        assert len(a.message or "") <= EXCERPT_MAX, a
    assert 0 < len(written.pods or []) <= PODS_NAMED_MAX
    assert all(len(p.message) <= EXCERPT_MAX for p in written.pods or [])
    for c in conditions.values():  # a few KiB at any fleet size: lists in messages name a few, then count
        assert len(c.message) <= 4096, (c.type, len(c.message))
    size = len(json.dumps({"status": kube.objs[key]["status"]}))
    whole = len(json.dumps(kube.objs[key]))
    print(
        f"status of {FLEET_ADAPTERS} adapters x {FLEET_PODS} failing Pods: {size} bytes; object {whole} bytes"
    )
    assert size < 1 << 20 and whole < ETCD_OBJECT_LIMIT, (size, whole)
    # What the pass left the operator remembering of each Pod: its failures, bounded, and nothing on the Pods.
    kept = lora.MEMORIES.of(("team-a", "fleet"), kube.list(k.POD, "team-a"))
    assert len(kept) == FLEET_PODS and all(m != earlier_passes(0) or m.failures for m in kept.values())
    assert all(not (pod["metadata"].get("annotations") or {}) for pod in kube.list(k.POD, "team-a"))
