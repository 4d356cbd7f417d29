"""Runs the chart through Helm for the tests: finds (or fetches) the helm binary, renders with given values."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneops import toolpaths

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tuneops"


def helm_binary() -> Path:
    """The cached helm; scripts/get-helm.sh puts it there on first use (CI starts without it)."""
    binary = toolpaths.helm_binary()
    if not binary.is_file():
        subprocess.run([str(ROOT / "scripts" / "get-helm.sh")], check=True, timeout=600)
    if not binary.is_file():
        pytest.fail(f"helm not found at {binary} after scripts/get-helm.sh", pytrace=False)
    return binary


def helm(*args: str, check: bool = True, timeout: float = 120, env: Mapping[str, str] | None = None) -> str:
    proc = subprocess.run(
        [str(helm_binary()), *args], capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc.stdout if check else proc.stdout + proc.stderr


def values_args(values: Mapping[str, Any], tmp: Path) -> list[str]:
    path = tmp / f"values-{abs(hash(yaml.safe_dump(dict(values), sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(dict(values)))
    return ["-f", str(path)]


def template(
    values: Mapping[str, Any],
    tmp: Path,
    *,
    release: str = "tuneops",
    namespace: str = "tuneops-system",
    extra: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """`helm template --include-crds` with `values`; the rendered objects in order."""
    out = helm(
        "template", release, str(CHART), "--namespace", namespace, "--include-crds",
        *values_args(values, tmp), *extra,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out) if d]


def template_error(values: Mapping[str, Any], tmp: Path) -> str:
    """What `helm template` says when it refuses `values` (fails the test if it renders)."""
    proc = subprocess.run(
        [str(helm_binary()), "template", "t", str(CHART), *values_args(values, tmp)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode != 0, f"helm template accepted {dict(values)}"
    return proc.stderr


def find(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: Sequence[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def rule_set(rules: Sequence[Mapping[str, Any]]) -> set[tuple[str, str, str]]:
    """RBAC rules flattened to (apiGroup, resource, verb) triples."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups") or [""]
        for resource in rule.get("resources") or []
        for verb in rule.get("verbs") or []
    }


def _triples(group: str, resources: Sequence[str], verbs: Sequence[str]) -> set[tuple[str, str, str]]:
    return {(group, r, v) for r in resources for v in verbs}


CRS = ("finetunedmodels", "quantizationjobs", "inferenceservices", "loraadapters")
CHILD_VERBS = ("get", "list", "watch", "create", "patch", "delete")

# What the operator does in a namespace, and nothing more (see operator/tuneops/kube, controller.py and
# reconcile/): every kind it reads is listed and watched into its cache; its own resources are only read, and
# written through status (merge patch); children are server-side applied (create + patch of a new object) and
# pruned (delete); a serving Pod's status gets the adapters readiness gate's condition (pods/status); Events are created
# and listed. Secrets are not read unless rbac.readSecrets asks for it (EXPECTED_SECRET_RULES). Nothing is
# needed outside the watched namespaces: no ClusterRole in the namespaced scope.
EXPECTED_NAMESPACE_RULES = (
    _triples("tuneops.io", CRS, ("get", "list", "watch"))
    | _triples("tuneops.io", [f"{r}/status" for r in CRS], ("patch",))
    | _triples("tuneops.io", [f"{r}/finalizers" for r in CRS], ("update",))
    | _triples("batch", ["jobs"], CHILD_VERBS)
    | _triples("", ["pods"], ("get", "list", "watch"))
    | _triples("", ["pods/status"], ("patch",))
    | _triples("", ["services", "configmaps"], CHILD_VERBS)
    | _triples("apps", ["deployments"], CHILD_VERBS)
    | _triples("policy", ["poddisruptionbudgets"], CHILD_VERBS)
    | _triples("leaderworkerset.x-k8s.io", ["leaderworkersets"], CHILD_VERBS)
    | _triples("networking.k8s.io", ["networkpolicies"], CHILD_VERBS)
    | _triples("", ["events"], ("create", "list"))
    # InferenceService autoscalers and routing (spec.autoscaling, spec.routing).
    | _triples("autoscaling", ["horizontalpodautoscalers"], CHILD_VERBS)
    | _triples("keda.sh", ["scaledobjects"], CHILD_VERBS)
    | _triples("inference.networking.k8s.io", ["inferencepools"], CHILD_VERBS)
    | _triples("gateway.networking.k8s.io", ["httproutes"], CHILD_VERBS)
)
# Cluster scope only: namespace labels, for a service's allowedAdapters from: Selector.
EXPECTED_CLUSTER_RULES = EXPECTED_NAMESPACE_RULES | _triples("", ["namespaces"], ("get",))
# rbac.readSecrets: InferenceService.spec.apiKeySecretRef is read by name.
EXPECTED_SECRET_RULES = _triples("", ["secrets"], ("get",))
# operator.leaderElection.enabled: the Lease in the release namespace (get and update limited to its name).
EXPECTED_LEASE_RULES = _triples("coordination.k8s.io", ["leases"], ("get", "create", "update"))
