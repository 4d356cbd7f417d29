"""The Helm chart: lint, strictly valid manifests for several values sets, and what each value changes."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from tests.unit.chart_support import (
    CHART,
    EXPECTED_CLUSTER_RULES,
    EXPECTED_LEASE_RULES,
    EXPECTED_NAMESPACE_RULES,
    EXPECTED_SECRET_RULES,
    ROOT,
    find,
    helm,
    one,
    rule_set,
    template,
    template_error,
    values_args,
)
from tuneops.config import OperatorConfig
from tuneops.storage.uri import parse_uri

# The oldest and newest Kubernetes versions kubernetes-validate carries schemas for.
K8S_VERSIONS = ("1.25.0", "1.37.0")

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
    "cluster-some-namespaces": {"watchNamespaces": ["team-a"], "rbac": {"scope": "cluster"}},
    "cluster-secrets": {"rbac": {"scope": "cluster", "readSecrets": True}},
    "templated-crds": {"crds": {"templated": True, "annotations": {"example.com/owner": "platform"}}},
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "scrapeTimeout": "10s"},
            "vllmPodMonitor": {"enabled": True},
        },
        "grafana": {"dashboards": {"enabled": True}},
    },
    "leader-election": {"operator": {"leaderElection": {"enabled": True}, "replicas": 2}},
    "artifact-claim": {
        "watchNamespaces": ["team-a", "team-b"],
        "config": {"artifactRoot": "pvc://models/tuneops"},
        "artifacts": {
            "claim": {
                "create": True,
                "storageClassName": "nfs-rwx",
                "size": "2Ti",
                "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
                "labels": {"team": "ml"},
                "annotations": {"example.com/backup": "daily"},
            }
        },
    },
    "external-sa-no-rbac": {"serviceAccount": {"create": False, "name": "ops"}, "rbac": {"create": False}},
    "pinned-and-scheduled": {
        "image": {"digest": "sha256:" + "a" * 64, "tag": "0.1.0"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/a": "b"},
        "operator": {
            "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
            "logLevel": "DEBUG",
        },
        "config": {
            "images": {"vllm": "registry.local/vllm:v0.11.0"},
            "spareGpus": True,
            "allowCrossNamespaceRefs": True,
        },
    },
}

# prometheus-operator kinds are not in kubernetes-validate: the fields the chart writes, checked strictly.
MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"enum": ["ServiceMonitor", "PodMonitor"]},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector"],
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": {"type": "object"}, "matchExpressions": {"type": "array"}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False,
                                      "properties": {"any": {"type": "boolean"},
                                                     "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "endpoints": {"$ref": "#/$defs/endpoints"},
                "podMetricsEndpoints": {"$ref": "#/$defs/endpoints"},
            },
        },
    },
    "$defs": {
        "endpoints": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["port", "path"],
                "properties": {
                    "port": {"type": "string"},
                    "path": {"type": "string"},
                    "interval": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                    "scrapeTimeout": {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"},
                },
            },
        }
    },
}  # fmt: skip


def render(values: dict[str, Any], tmp_path: Path, **kw: Any) -> list[dict[str, Any]]:
    return template(values, tmp_path, **kw)


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def operator_config(docs: list[dict[str, Any]]) -> OperatorConfig:
    cm = one(docs, "ConfigMap", "tuneops-config")
    return OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))


# ------------------------------------------------------------------------------------- lint and validation


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict(name: str, tmp_path: Path) -> None:
    out = helm("lint", "--strict", str(CHART), *values_args(VALUE_SETS[name], tmp_path))
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_rendered_manifests_are_strictly_valid(name: str, version: str, tmp_path: Path) -> None:
    docs = render(VALUE_SETS[name], tmp_path)
    assert docs
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue  # test_crds_are_valid_for_the_api_server
        if doc["apiVersion"] == "monitoring.coreos.com/v1":
            jsonschema.validate(doc, MONITOR_SCHEMA)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{name}: {doc['kind']} {doc['metadata']['name']}: {err.message}") from err


def merged(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_values_sets_match_the_schema(name: str) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(merged(defaults, VALUE_SETS[name]), schema, cls=jsonschema.Draft7Validator)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rbac": {"scope": "everywhere"}}, "/rbac/scope"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "md5:abc"}}, "/image/digest"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"config": {"artifactRoot": "/data"}}, "/config/artifactRoot"),
        ({"config": {"imagez": {}}}, "imagez"),
        ({"config": {"routing": {"endpointPicker": {"port": 9002}}}}, "/config/routing/endpointPicker"),
        ({"config": {"routing": {"endpointPicker": {"name": "epp", "failureMode": "Open"}}}}, "failureMode"),
        ({"operator": {"resyncSeconds": 1}}, "/operator/resyncSeconds"),
        ({"operator": {"replicas": -1}}, "/operator/replicas"),
        ({"operator": {"peering": {"enabled": True}}}, "peering"),
        ({"metrics": {"port": 70000}}, "/metrics/port"),
        ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "/metrics/serviceMonitor/interval"),
        ({"unknownTopLevel": True}, "unknownTopLevel"),
        ({"artifacts": {"claim": {"accessModes": ["ReadWriteAll"]}}}, "/artifacts/claim/accessModes/0"),
        ({"artifacts": {"claim": {"size": "lots"}}}, "/artifacts/claim/size"),
        ({"artifacts": {"claim": {"storageClassName": "Fast_SSD"}}}, "/artifacts/claim/storageClassName"),
        ({"artifacts": {"claim": {"name": "x"}}}, "name"),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    assert message in template_error(values, tmp_path)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        (
            {"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
            "needs metrics.service",
        ),
        (
            {"operator": {"replicas": 2}},
            "operator.replicas is 2: more than one replica needs operator.leaderElection.enabled=true",
        ),
        (
            {"artifacts": {"claim": {"create": True}}, "config": {"artifactRoot": "s3://bucket/models"}},
            "artifacts.claim.create needs config.artifactRoot to be pvc://<claim>[/path]",
        ),
        (
            {"artifacts": {"claim": {"create": True}}, "config": {"artifactRoot": "pvc://Models"}},
            '"Models" is not a valid PersistentVolumeClaim name',
        ),
    ],
)
def test_inconsistent_values_fail_with_a_message(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    assert message in template_error(values, tmp_path)


# ------------------------------------------------------------------------------------------------- CRDs


def test_chart_crds_are_the_generated_crds() -> None:
    generated = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert shipped == generated
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/tuneops/crds/{name} differs from crds/{name}: run `make crds` and copy crds/*.yaml into the chart"
        )


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crds_are_valid_for_the_api_server(version: str, tmp_path: Path) -> None:
    for crd in find(render({}, tmp_path), "CustomResourceDefinition"):
        try:
            kubernetes_validate.validate(crd, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            raise AssertionError(f"{crd['metadata']['name']}: {where}: {err.message}") from err


def test_crds_come_from_crds_folder_by_default(tmp_path: Path) -> None:
    plain = [d for d in render({}, tmp_path, extra=()) if d["kind"] == "CustomResourceDefinition"]
    assert {d["metadata"]["name"] for d in plain} == {
        "finetunedmodels.tuneops.io", "quantizationjobs.tuneops.io", "inferenceservices.tuneops.io",
        "loraadapters.tuneops.io",
    }  # fmt: skip
    for crd in plain:
        assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    without = helm("template", "t", str(CHART), "--skip-crds")
    assert "CustomResourceDefinition" not in without


@pytest.mark.parametrize("keep", [True, False])
def test_templated_crds_match_the_generated_ones_and_are_kept(keep: bool, tmp_path: Path) -> None:
    out = helm(
        "template", "t", str(CHART), "--skip-crds",
        *values_args({"crds": {"templated": True, "keep": keep}}, tmp_path),
    )  # fmt: skip
    crds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 4
    for crd in crds:
        generated = yaml.safe_load((ROOT / "crds" / f"{crd['metadata']['name']}.yaml").read_text())
        assert crd["spec"] == generated["spec"]
        annotations = crd["metadata"].get("annotations") or {}
        assert (annotations.get("helm.sh/resource-policy") == "keep") is keep
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


# ------------------------------------------------------------------------------------------ Deployment


def test_deployment_is_one_replica_recreate_with_restricted_security(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    dep = deployment(docs)
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # A read-only root filesystem needs a writable /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    assert "/tmp" in mounts
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]


def test_leader_election_runs_standbys_and_rolls_updates(tmp_path: Path) -> None:
    docs = render({"operator": {"leaderElection": {"enabled": True}, "replicas": 3}}, tmp_path)
    dep = deployment(docs)
    assert dep["spec"]["replicas"] == 3
    # The new Pod starts before the old one goes; it stands by until the old one releases the Lease.
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    c = container(docs)
    assert c["args"][3:5] == ["--leader-election", "--leader-election-id=tuneops"]
    # The Lease's namespace is the Pod's own (the CLI's default for --leader-election-namespace).
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_one_replica_with_leader_election_also_rolls(tmp_path: Path) -> None:
    dep = deployment(render({"operator": {"leaderElection": {"enabled": True}}}, tmp_path))
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "RollingUpdate"


def test_liveness_probe_points_at_the_kopf_endpoint(tmp_path: Path) -> None:
    c = container(render({"operator": {"livenessPort": 8181}}, tmp_path))
    assert "--liveness=http://0.0.0.0:8181/healthz" in c["args"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["health"] == 8181
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_config_is_mounted_and_passed_through_tuneops_config(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    c = container(docs)
    env = {e["name"]: e.get("value") for e in c["env"]}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in deployment(docs)["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    cm = one(docs, "ConfigMap", volume["configMap"]["name"])
    assert env["TUNEOPS_CONFIG"] == f"{mount['mountPath']}/config.yaml"
    assert "config.yaml" in cm["data"]


def test_default_config_equals_the_operators_defaults(tmp_path: Path) -> None:
    """Apart from the namespaces: the chart's default is to watch its own (and it names its own, which the
    NetworkPolicies of services without an API key admit)."""
    ns = "tuneops-system"
    assert operator_config(render({}, tmp_path)) == OperatorConfig(namespaces=[ns], operator_namespace=ns)
    cluster = OperatorConfig(operator_namespace=ns)
    assert operator_config(render({"rbac": {"scope": "cluster"}}, tmp_path)) == cluster


def test_config_values_reach_the_operator(tmp_path: Path) -> None:
    values = {
        "config": {
            "images": {"worker": "r/w:1", "gguf": "r/g:1", "vllm": "r/v:1", "llamacpp": "r/l:1"},
            "artifactRoot": "s3://bucket/models",
            "pvcMountRoot": "/data",
            "allowCrossNamespaceRefs": True,
            "jobTtlSeconds": 600,
            "clusterDomain": "corp.local",
            "workerCpu": "500m",
            "workerMemory": "2Gi",
            "gpuToleration": False,
            "spareGpus": True,
            "allowCustomCode": True,
            "routing": {"endpointPicker": {"name": "epp", "port": 9003, "failureMode": "FailOpen"}},
        },
        "watchNamespaces": ["ml"],
    }
    cfg = operator_config(render(values, tmp_path))
    assert cfg.images.model_dump() == {
        "worker": "r/w:1",
        "gguf": "r/g:1",
        "vllm": "r/v:1",
        "llamacpp": "r/l:1",
    }
    assert (cfg.artifact_root, cfg.pvc_mount_root, cfg.cluster_domain) == (
        "s3://bucket/models",
        "/data",
        "corp.local",
    )
    assert (cfg.allow_cross_namespace_refs, cfg.gpu_toleration, cfg.spare_gpus) == (True, False, True)
    assert cfg.allow_custom_code is True
    assert (cfg.job_ttl_seconds, cfg.worker_cpu, cfg.worker_memory) == (600, "500m", "2Gi")
    assert cfg.namespaces == ["ml"]
    picker = cfg.routing.endpoint_picker
    assert picker is not None and picker.wire() == {"name": "epp", "port": 9003, "failureMode": "FailOpen"}


def test_a_config_change_restarts_the_operator(tmp_path: Path) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return str(
            deployment(render(values, tmp_path))["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
        )

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"spareGpus": True}})


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, ["--namespace=tuneops-system"]),
        ({"rbac": {"scope": "cluster"}}, ["--all-namespaces"]),
        ({"watchNamespaces": ["a", "b"]}, ["--namespace=a", "--namespace=b"]),
        ({"rbac": {"scope": "cluster"}, "watchNamespaces": ["a"]}, ["--namespace=a"]),
        (
            {"operator": {"leaderElection": {"enabled": True}}},
            ["--leader-election", "--leader-election-id=tuneops", "--namespace=tuneops-system"],
        ),
        ({"operator": {"extraArgs": ["--foo"]}}, ["--namespace=tuneops-system", "--foo"]),
    ],
)
def test_operator_args(values: dict[str, Any], expected: list[str], tmp_path: Path) -> None:
    args = container(render(values, tmp_path))["args"]
    assert args[0] == "run"
    assert args[1].startswith("--liveness=") and args[2] == "--metrics-port=9090"
    assert args[3:] == expected


def test_image_tag_defaults_to_app_version_and_digest_pins_it(tmp_path: Path) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(render({}, tmp_path))["image"] == f"ghcr.io/tuneops/operator:{chart['appVersion']}"
    pinned = container(render({"image": {"tag": "1.2.3", "digest": "sha256:" + "b" * 64}}, tmp_path))["image"]
    assert pinned == "ghcr.io/tuneops/operator:1.2.3@sha256:" + "b" * 64


def test_operator_env_values(tmp_path: Path) -> None:
    values = {"operator": {"logLevel": "DEBUG", "pollSeconds": 2, "resyncSeconds": 60}}
    env = {e["name"]: e.get("value") for e in container(render(values, tmp_path))["env"]}
    assert (env["TUNEOPS_LOG_LEVEL"], env["TUNEOPS_POLL_SECONDS"], env["TUNEOPS_RESYNC_SECONDS"]) == (
        "DEBUG", "2", "60",
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ RBAC


CLUSTER = {"rbac": {"scope": "cluster"}}


LEASE_ROLE = "Role/tuneops-system/tuneops-leader-election"


def rules_by_kind(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    """What each (Cluster)Role grants, keyed "ClusterRole", "Role/<namespace>" (the operator's Role in a watched
    namespace) or "Role/<namespace>/<name>" (any other Role)."""
    out = {}
    for d in find(docs, "ClusterRole") + find(docs, "Role"):
        key = d["kind"] if d["kind"] == "ClusterRole" else f"Role/{d['metadata']['namespace']}"
        if d["kind"] == "Role" and d["metadata"]["name"] != "tuneops":
            key += f"/{d['metadata']['name']}"
        out[key] = rule_set(d["rules"])
    return out


def test_default_is_namespaced_in_the_release_namespace_without_secrets(tmp_path: Path) -> None:
    """The least-privileged mode is the default: Jobs, Deployments and the rest only in the release namespace,
    Secrets nowhere, and nothing cluster-wide."""
    docs = render({}, tmp_path)
    assert rules_by_kind(docs) == {"Role/tuneops-system": EXPECTED_NAMESPACE_RULES}
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    assert not {r for rules in rules_by_kind(docs).values() for r in rules if r[1] == "secrets"}
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": one(docs, "Role")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tuneops", "namespace": "tuneops-system"}
    ]
    assert container(docs)["args"][3:] == ["--namespace=tuneops-system"]


def test_cluster_scope_is_an_explicit_choice_and_grants_exactly_the_least_privilege_set(
    tmp_path: Path,
) -> None:
    docs = render(CLUSTER, tmp_path)
    role = one(docs, "ClusterRole")
    assert rule_set(role["rules"]) == EXPECTED_CLUSTER_RULES
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "tuneops-system"}
    ]
    assert not find(docs, "Role") and not find(docs, "RoleBinding")


def test_cluster_scope_watching_named_namespaces_grants_the_same_set(tmp_path: Path) -> None:
    """The operator watches each named namespace itself: no namespace discovery."""
    role = one(render({**CLUSTER, "watchNamespaces": ["a"]}, tmp_path), "ClusterRole")
    assert rule_set(role["rules"]) == EXPECTED_CLUSTER_RULES


def test_namespaced_scope_grants_roles_per_namespace_and_nothing_cluster_wide(tmp_path: Path) -> None:
    docs = render({"watchNamespaces": ["a", "b"]}, tmp_path)
    assert rules_by_kind(docs) == {"Role/a": EXPECTED_NAMESPACE_RULES, "Role/b": EXPECTED_NAMESPACE_RULES}
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["a", "b"]
    for binding in bindings:
        assert binding["subjects"][0]["namespace"] == "tuneops-system"


def test_namespaced_scope_defaults_to_the_release_namespace(tmp_path: Path) -> None:
    docs = render({}, tmp_path, namespace="ops")
    assert [r["metadata"]["namespace"] for r in find(docs, "Role")] == ["ops"]


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"watchNamespaces": ["a", "b"]}, {"Role/a", "Role/b"}),
        (CLUSTER, {"ClusterRole"}),
    ],
)
def test_secrets_are_read_only_when_asked_and_only_where_the_operator_works(
    values: dict[str, Any], where: set[str], tmp_path: Path
) -> None:
    without = rules_by_kind(render(values, tmp_path))
    with_secrets = rules_by_kind(render(merged(values, {"rbac": {"readSecrets": True}}), tmp_path))
    assert {k: v - without[k] for k, v in with_secrets.items() if v != without[k]} == {
        k: EXPECTED_SECRET_RULES for k in where
    }


LEADER = {"operator": {"leaderElection": {"enabled": True}}}


@pytest.mark.parametrize(
    ("values", "roles"),
    [
        ({}, {"Role/tuneops-system"}),
        (CLUSTER, {"ClusterRole"}),
        (LEADER, {"Role/tuneops-system", LEASE_ROLE}),
        ({**LEADER, **CLUSTER}, {"ClusterRole", LEASE_ROLE}),
        ({**LEADER, "watchNamespaces": ["a"]}, {"Role/a", LEASE_ROLE}),
    ],
)
def test_lease_rights_only_with_leader_election_and_only_in_the_release_namespace(
    values: dict[str, Any], roles: set[str], tmp_path: Path
) -> None:
    docs = render(values, tmp_path)
    rules = rules_by_kind(docs)
    assert set(rules) == roles
    assert {k for k, v in rules.items() if any(g == "coordination.k8s.io" for g, _, _ in v)} == roles & {
        LEASE_ROLE
    }
    if LEASE_ROLE in roles:
        assert rules[LEASE_ROLE] == EXPECTED_LEASE_RULES
        role = one(docs, "Role", "tuneops-leader-election")
        # create cannot name the object; get and update are limited to the release's Lease.
        by_verbs = {tuple(r["verbs"]): r.get("resourceNames") for r in role["rules"]}
        assert by_verbs == {("create",): None, ("get", "update"): ["tuneops"]}
        binding = one(docs, "RoleBinding", "tuneops-leader-election")
        assert binding["metadata"]["namespace"] == "tuneops-system"
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tuneops-leader-election"
        }  # fmt: skip
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "tuneops", "namespace": "tuneops-system"}
        ]


def test_no_kind_of_the_operators_own_is_patched_or_updated(tmp_path: Path) -> None:
    """Spec and metadata of tuneops resources are the user's: the operator writes status only."""
    for values in ({}, CLUSTER):
        granted = set().union(*rules_by_kind(render(values, tmp_path)).values())
        own = {(r, v) for g, r, v in granted if g == "tuneops.io" and "/" not in r}
        assert own == {(r, v) for r in ("finetunedmodels", "quantizationjobs", "inferenceservices", "loraadapters")
                       for v in ("get", "list", "watch")}  # fmt: skip


def test_no_rbac_and_an_existing_service_account(tmp_path: Path) -> None:
    docs = render(VALUE_SETS["external-sa-no-rbac"], tmp_path)
    for kind in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"):
        assert not find(docs, kind), kind
    assert deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


# ------------------------------------------------------------------------------------------ artifact claim


def test_no_artifact_claim_by_default(tmp_path: Path) -> None:
    assert not find(render({}, tmp_path), "PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        ({}, ["tuneops-system"]),
        ({"rbac": {"scope": "namespaced"}}, ["tuneops-system"]),
        ({"watchNamespaces": ["a", "b"]}, ["a", "b"]),
        (
            {"watchNamespaces": ["a"], "artifacts": {"claim": {"namespaces": ["ml-a", "ml-b"]}}},
            ["ml-a", "ml-b"],
        ),
    ],
)
def test_artifact_claim_is_the_one_the_operator_writes_to_in_each_namespace(
    values: dict[str, Any], namespaces: list[str], tmp_path: Path
) -> None:
    docs = render(merged(values, {"artifacts": {"claim": {"create": True}}}), tmp_path)
    claims = find(docs, "PersistentVolumeClaim")
    assert [c["metadata"]["namespace"] for c in claims] == namespaces
    root = parse_uri(operator_config(docs).artifact_root)
    for claim in claims:
        assert claim["metadata"]["name"] == root.claim == "tuneops-artifacts"
        assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert claim["spec"] == {
            "accessModes": ["ReadWriteMany"],
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "200Gi"}},
        }


def test_artifact_claim_values(tmp_path: Path) -> None:
    docs = render(VALUE_SETS["artifact-claim"], tmp_path)
    assert operator_config(docs).artifact_root == "pvc://models/tuneops"
    claim = find(docs, "PersistentVolumeClaim")[0]
    assert claim["metadata"]["name"] == "models"
    assert claim["metadata"]["labels"]["team"] == "ml"
    assert claim["metadata"]["labels"]["app.kubernetes.io/component"] == "artifacts"
    assert claim["metadata"]["annotations"]["example.com/backup"] == "daily"
    assert claim["spec"]["storageClassName"] == "nfs-rwx"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany", "ReadOnlyMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    dropped = render(
        merged(VALUE_SETS["artifact-claim"], {"artifacts": {"claim": {"keep": False}}}), tmp_path
    )
    assert (
        "helm.sh/resource-policy" not in find(dropped, "PersistentVolumeClaim")[0]["metadata"]["annotations"]
    )


def test_notes_say_where_default_outputs_go(tmp_path: Path) -> None:
    notes = helm("install", "t", str(CHART), "--dry-run=client", "-n", "ops")
    assert "that claim must exist in every namespace" in notes
    created = helm("install", "t", str(CHART), "--dry-run=client", "-n", "ops",
                   *values_args({"artifacts": {"claim": {"create": True}}}, tmp_path))  # fmt: skip
    assert (
        "this release creates the claim tuneops-artifacts\nin namespaces ops and keeps it on uninstall"
        in created
    )


# ----------------------------------------------------------------------------------- metrics and monitors


def test_monitors_are_off_by_default(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    assert not find(docs, "ServiceMonitor") and not find(docs, "PodMonitor")
    assert not find(docs, "ConfigMap", "tuneops-dashboards")


def test_service_monitor_selects_the_metrics_service(tmp_path: Path) -> None:
    docs = render(VALUE_SETS["monitoring"], tmp_path)
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service")
    labels = svc["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    # The Service reaches the operator's metrics port.
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(docs)["ports"]}
    selector = svc["spec"]["selector"]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels.get(k) == v for k, v in selector.items())


def test_vllm_pod_monitor_selects_inference_service_pods(tmp_path: Path) -> None:
    pm = one(render(VALUE_SETS["monitoring"], tmp_path), "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"]["tuneops.io/kind"] == "InferenceService"
    assert pm["spec"]["podMetricsEndpoints"][0] == {"port": "http", "path": "/metrics", "interval": "15s"}
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def test_dashboards_configmap_carries_valid_dashboards(tmp_path: Path) -> None:
    cm = one(render(VALUE_SETS["monitoring"], tmp_path), "ConfigMap", "tuneops-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert files and sorted(cm["data"]) == files
    for name, text in cm["data"].items():
        dashboard = json.loads(text)
        assert dashboard["title"] and dashboard["panels"], name


def test_metrics_port_moves_container_and_service(tmp_path: Path) -> None:
    docs = render({"metrics": {"port": 9400, "service": {"port": 80}}}, tmp_path)
    c = container(docs)
    assert "--metrics-port=9400" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 9400
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 80
    assert not find(render({"metrics": {"service": {"enabled": False}}}, tmp_path), "Service")


def test_notes_name_the_watched_namespaces_and_crd_mode(tmp_path: Path) -> None:
    notes = helm("install", "t", str(CHART), "--dry-run=client", "-n", "ops",
                 *values_args({"watchNamespaces": ["a", "b"]}, tmp_path))  # fmt: skip
    assert "It watches namespaces a, b" in notes
    assert "never upgrades them" in notes
    templated = helm("install", "t", str(CHART), "--dry-run=client", "--skip-crds",
                     *values_args({"crds": {"templated": True}}, tmp_path))  # fmt: skip
    assert "managed by this release" in templated


# ------------------------------------------------------------------------------------------- the image


def test_operator_image_runs_as_a_numeric_non_root_user_from_a_pinned_base() -> None:
    dockerfile = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", dockerfile, flags=re.M)
    assert base is not None
    assert re.fullmatch(r"[\w./-]+:3\.11\.\d+-slim-\w+(@sha256:[a-f0-9]{64})?", base.group(1)), base.group(1)
    # The chart's pod UID is the image's user, so files the image owns stay readable.
    assert str(uid) == "65532"


def test_operator_image_pins_satisfy_the_package_dependencies() -> None:
    pins: dict[str, str] = {}
    for line in (ROOT / "images" / "operator" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"unpinned requirement {line!r}"
        pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        key = req.name.lower().replace("_", "-")
        assert key in pins, f"{req.name} is not pinned in images/operator/requirements.txt"
        assert req.specifier.contains(pins[key]), f"{req.name}=={pins[key]} does not satisfy {req.specifier}"
