"""The chart installed by Helm into an API server with RBAC on; the operator runs with the chart's ServiceAccount.

A control plane of its own (RBAC authorization, audit log, OwnerReferencesPermissionEnforcement as on
hardened clusters), so the session's AlwaysAllow control plane stays as it is. The chart is installed with its
default (least-privileged) RBAC, watching one namespace; the broad mode is checked by upgrading the release.
"""

from __future__ import annotations

import base64
import contextlib
import re
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import config

from tests.integration.conftest import Kubectl, _data_root, _ensure_kubectl, wait_for
from tests.integration.helpers import (
    ADAPTER_RESULT,
    complete,
    ftm,
    job_named,
    merge_result,
    ready_reason,
    wait_ready,
)
from tests.integration.operator_bed import Cluster, OperatorProcess
from tests.unit.chart_support import (
    CHART,
    EXPECTED_CLUSTER_RULES,
    EXPECTED_LEASE_RULES,
    EXPECTED_NAMESPACE_RULES,
    EXPECTED_SECRET_RULES,
    helm,
    values_args,
)
from tuneops.kube.client import Kube
from tuneops.leader import LeaderElector
from tuneops.local.controlplane import AuditLog, ControlPlane, binaries_missing

RELEASE = "tuneops"
RELEASE_NS = "tuneops-system"
SA = "tuneops"
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{SA}"
WATCHED = "team-a"
VALUES = {"watchNamespaces": [WATCHED]}


@dataclass
class Bed:
    cp: ControlPlane
    kubectl: Kubectl
    cluster: Cluster
    sa_kubeconfig: Path
    operator: OperatorProcess
    audit: AuditLog
    install_output: str


def _sa_token(kubectl: Kubectl) -> str:
    """The token the token controller (kube-controller-manager, 1.20) puts into a Secret for the ServiceAccount."""

    def secret_name() -> str | None:
        sa = kubectl.get_json("serviceaccount", SA, namespace=RELEASE_NS)
        names = [s["name"] for s in sa.get("secrets") or [] if s["name"].startswith(f"{SA}-token-")]
        return names[0] if names else None

    name = wait_for(secret_name, timeout=30, what="the ServiceAccount's token Secret")
    secret = kubectl.get_json("secret", name, namespace=RELEASE_NS)
    assert secret["type"] == "kubernetes.io/service-account-token"
    return base64.b64decode(secret["data"]["token"]).decode()


def _kubeconfig(cp: ControlPlane, token: str, path: Path) -> Path:
    ca = base64.b64encode(cp.ca_path.read_bytes()).decode()
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "bed", "cluster": {"server": cp.server_url, "certificate-authority-data": ca}}
                ],
                "users": [{"name": SA, "user": {"token": token}}],
                "contexts": [{"name": "bed", "context": {"cluster": "bed", "user": SA}}],
                "current-context": "bed",
            }
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    missing = binaries_missing()
    if missing:
        pytest.fail("missing " + ", ".join(missing) + "; run `make kube`", pytrace=False)
    cp = ControlPlane(
        data_dir=Path(tempfile.mkdtemp(prefix="tuneops-rbac-", dir=_data_root())),
        keep_data=False,
        authorization_mode="RBAC",
        audit=True,
        die_with_parent=True,
        extra_apiserver_args=["--enable-admission-plugins=OwnerReferencesPermissionEnforcement"],
    )
    cp.start()
    work = tmp_path_factory.mktemp("chart")
    operator: OperatorProcess | None = None
    try:
        kubectl = Kubectl(_ensure_kubectl(), cp.kubeconfig_path)
        kubectl("create", "namespace", WATCHED)  # the chart puts a Role into it
        # A 1.20 server knows no x-kubernetes-validations: Helm's default server-side apply refuses the CRDs
        # there, the classic create drops the field (docs/helm.md).
        out = helm(
            "install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
            "--server-side=false", f"--kubeconfig={cp.kubeconfig_path}", *values_args(VALUES, work), timeout=180,
        )  # fmt: skip
        for crd in ("finetunedmodels", "quantizationjobs", "inferenceservices"):
            kubectl("wait", "--for=condition=Established", f"crd/{crd}.tuneops.io", "--timeout=60s")
        sa_kubeconfig = _kubeconfig(cp, _sa_token(kubectl), work / "kubeconfig-sa")
        # The operator reads the config the chart wrote into its ConfigMap, as it does in the Pod.
        cm = kubectl.get_json("configmap", f"{RELEASE}-config", namespace=RELEASE_NS)
        (work / "config.yaml").write_text(cm["data"]["config.yaml"])
        # ... and watches what the Deployment's arguments say.
        dep = kubectl.get_json("deployment", RELEASE, namespace=RELEASE_NS)
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        watched = [a.removeprefix("--namespace=") for a in args if a.startswith("--namespace=")]
        assert watched == [WATCHED], args
        operator = OperatorProcess(
            sa_kubeconfig,
            work / "operator.log",
            extra_env={"TUNEOPS_CONFIG": str(work / "config.yaml")},
            namespaces=watched,
        )
        operator.start()
        api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
        yield Bed(cp, kubectl, Cluster(api), sa_kubeconfig, operator, cp.audit_log, out)
        api.close()
    finally:
        if operator is not None:
            operator.stop()
        cp.stop()


@pytest.fixture(scope="module")
def elsewhere(bed: Bed) -> str:
    """A namespace the operator does not watch."""
    bed.kubectl("create", "namespace", "elsewhere")
    return "elsewhere"


def test_helm_install_creates_the_release_and_crds(bed: Bed) -> None:
    assert "STATUS: deployed" in bed.install_output
    status = helm("status", RELEASE, "-n", RELEASE_NS, f"--kubeconfig={bed.cp.kubeconfig_path}")
    assert "STATUS: deployed" in status
    dep = bed.kubectl.get_json("deployment", RELEASE, namespace=RELEASE_NS)
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == SA
    # `kubectl get tuneops` lists every kind through the shared category.
    out = bed.kubectl("get", "tuneops", "-A").stderr
    assert "No resources found" in out


def test_operator_with_the_charts_service_account_reconciles_a_finetunedmodel(bed: Bed) -> None:
    ns = WATCHED
    mark = bed.audit.mark()
    bed.kubectl.apply(ftm("m"), namespace=ns)
    inspect = job_named(bed.cluster, ns, "inspect", wait_for)
    owner = inspect.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.block_owner_deletion) == ("FineTunedModel", "m", True)
    wait_for(
        lambda: (
            ready_reason(bed.cluster, "finetunedmodels", ns, "m")
            in {("False", "JobPending"), ("False", "JobRunning")}
        ),
        what="status written by the operator",
    )
    complete(bed.cluster, ns, inspect.metadata.name, ADAPTER_RESULT, wait_for)
    merge = job_named(bed.cluster, ns, "merge", wait_for)
    complete(bed.cluster, ns, merge.metadata.name, merge_result(ns), wait_for)
    wait_ready(bed.cluster, "finetunedmodels", ns, "m", wait_for, timeout=40)
    status = bed.cluster.get("finetunedmodels", ns, "m")["status"]  # type: ignore[index]
    assert status["adapter"]["rank"] == 8
    assert "Succeeded" in {e.reason for e in bed.cluster.events(ns, "m")}

    # Every request the operator made was allowed, and was made as the chart's ServiceAccount.
    mine = bed.audit.select(mark, user=SA_USER)
    assert mine, "no requests from the ServiceAccount in the audit log"
    denied = sorted({(e.verb, e.resource, e.subresource, e.code) for e in mine if e.code == 403})
    assert not denied, f"RBAC refused the operator: {denied}\n{bed.operator.log()}"
    writes = {(e.verb, e.resource, e.subresource) for e in mine if e.is_write}
    assert ("patch", "finetunedmodels", "status") in writes
    assert ("create", "events", "") in writes
    assert ("patch", "jobs", "") in writes
    assert bed.operator.alive()


def _can_i_list(bed: Bed, namespace: str) -> set[tuple[str, str, str]]:
    """What the ServiceAccount may do in `namespace`, from the API server's own rules review."""
    out = bed.kubectl("auth", "can-i", "--list", f"--as={SA_USER}", "-n", namespace).stdout
    granted: set[tuple[str, str, str]] = set()
    for line in out.splitlines()[1:]:
        parts = line.split()
        if not parts or not parts[0] or parts[0].startswith("["):
            continue  # non-resource URLs (discovery), granted to every authenticated user
        resource = parts[0]
        verbs = re.search(r"\[([^\]]*)\]\s*$", line)
        assert verbs is not None, line
        # e.g. "finetunedmodels.tuneops.io/status": resource.group/subresource
        qualified, slash, sub = resource.partition("/")
        name, _, group = qualified.partition(".")
        for verb in verbs.group(1).split():
            granted.add((group, f"{name}{slash}{sub}", verb))
    return granted


# What every authenticated user may do anywhere (system:basic-user and system:discovery in 1.20).
EVERYONE = {
    ("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
    ("authorization.k8s.io", "selfsubjectrulesreviews", "create"),
}


def assert_granted(granted: set[tuple[str, str, str]], expected: set[tuple[str, str, str]]) -> None:
    assert granted == expected, (
        f"granted but not expected: {sorted(granted - expected)}\nexpected but not granted: {sorted(expected - granted)}"
    )


# The default: the operator's rights in the namespace it watches, nothing cluster-wide, no Secrets.
DEFAULT_GRANTS = EXPECTED_NAMESPACE_RULES


def test_the_chart_grants_exactly_the_least_privilege_verbs(bed: Bed) -> None:
    assert_granted(_can_i_list(bed, WATCHED) - EVERYONE, DEFAULT_GRANTS)


def test_outside_the_watched_namespaces_the_chart_grants_nothing(bed: Bed, elsewhere: str) -> None:
    assert_granted(_can_i_list(bed, elsewhere) - EVERYONE, set())


@pytest.mark.parametrize(
    ("verb", "resource"),
    [
        ("get", "secrets"),
        ("list", "secrets"),
        ("watch", "secrets"),
        ("create", "pods"),
        ("update", "finetunedmodels"),
        ("patch", "finetunedmodels"),
        ("delete", "finetunedmodels"),
        ("list", "namespaces"),
        ("list", "customresourcedefinitions"),
        ("get", "leases"),
        ("create", "clusterroles"),
        ("patch", "customresourcedefinitions"),
    ],
)
def test_the_service_account_cannot(bed: Bed, verb: str, resource: str) -> None:
    proc = bed.kubectl("auth", "can-i", verb, resource, f"--as={SA_USER}", "-n", WATCHED, check=False)
    assert proc.stdout.strip() == "no", f"{SA_USER} may {verb} {resource}"


@pytest.mark.parametrize(
    ("verb", "resource"), [("create", "jobs"), ("create", "deployments"), ("get", "secrets")]
)
def test_the_service_account_cannot_elsewhere(bed: Bed, elsewhere: str, verb: str, resource: str) -> None:
    proc = bed.kubectl("auth", "can-i", verb, resource, f"--as={SA_USER}", "-n", elsewhere, check=False)
    assert proc.stdout.strip() == "no", f"{SA_USER} may {verb} {resource} in {elsewhere}"


def test_a_kind_the_operator_never_touches_is_refused_to_its_token(bed: Bed) -> None:
    """The token really is the ServiceAccount's: a request outside its rules is refused by the API server."""
    proc = subprocess.run(
        [str(bed.kubectl.binary), f"--kubeconfig={bed.sa_kubeconfig}", "-n", WATCHED, "get", "secrets"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode != 0 and "forbidden" in proc.stderr.lower()


def test_cluster_scope_is_the_broad_mode_and_grants_exactly_its_set(
    bed: Bed, elsewhere: str, tmp_path: Path
) -> None:
    """`rbac.scope: cluster` (with readSecrets) grants the operator's rights in every namespace; the release is
    upgraded to it and back."""

    def upgrade(values: dict[str, object]) -> None:
        helm(
            "upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--server-side=false",
            f"--kubeconfig={bed.cp.kubeconfig_path}", *values_args(values, tmp_path), timeout=180,
        )  # fmt: skip

    upgrade({"rbac": {"scope": "cluster", "readSecrets": True}})
    try:
        broad = EXPECTED_CLUSTER_RULES | EXPECTED_SECRET_RULES
        assert_granted(wait_for_grants(bed, elsewhere, broad), broad)
    finally:
        upgrade(VALUES)
    assert_granted(wait_for_grants(bed, WATCHED, DEFAULT_GRANTS), DEFAULT_GRANTS)


def wait_for_grants(bed: Bed, ns: str, expected: set[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    """What the ServiceAccount may do in `ns` once the API server's RBAC cache shows `expected` (or after 30 s)."""
    last: set[tuple[str, str, str]] = set()

    def matches() -> bool:
        nonlocal last
        last = _can_i_list(bed, ns) - EVERYONE
        return last == expected

    with contextlib.suppress(AssertionError):  # the caller's comparison says what differs
        wait_for(matches, timeout=30, interval=1, what="the upgraded RBAC rules")
    return last


def test_leader_election_grants_the_lease_and_the_service_account_can_hold_it(
    bed: Bed, tmp_path: Path
) -> None:
    """operator.leaderElection: a Role in the release namespace for the release's Lease, enough to acquire,
    renew and release it with the ServiceAccount's own token; nothing about Leases elsewhere."""

    def upgrade(values: dict[str, object]) -> None:
        helm(
            "upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--server-side=false",
            f"--kubeconfig={bed.cp.kubeconfig_path}", *values_args(values, tmp_path), timeout=180,
        )  # fmt: skip

    def can_i(verb: str, what: str, namespace: str) -> bool:
        proc = bed.kubectl("auth", "can-i", verb, what, f"--as={SA_USER}", "-n", namespace, check=False)
        return proc.stdout.strip() == "yes"

    upgrade({**VALUES, "operator": {"leaderElection": {"enabled": True}, "replicas": 2}})
    try:
        wait_for(lambda: can_i("create", "leases", RELEASE_NS), timeout=30, interval=1, what="the Lease Role")
        # kubectl lists resourceNames-limited rules apart; the flattened set is still exactly the Lease's.
        assert {t for t in _can_i_list(bed, RELEASE_NS) - EVERYONE if t[0] == "coordination.k8s.io"} == (
            EXPECTED_LEASE_RULES
        )
        assert can_i("get", f"leases/{RELEASE}", RELEASE_NS) and can_i(
            "update", f"leases/{RELEASE}", RELEASE_NS
        )
        assert not can_i("get", "leases/another", RELEASE_NS) and not can_i(
            "update", "leases/another", RELEASE_NS
        )
        assert not can_i("create", "leases", WATCHED)
        dep = bed.kubectl.get_json("deployment", RELEASE, namespace=RELEASE_NS)
        assert dep["spec"]["replicas"] == 2
        assert "--leader-election" in dep["spec"]["template"]["spec"]["containers"][0]["args"]

        kube = Kube.from_kubeconfig(bed.sa_kubeconfig, user_agent="tuneops-test")
        a = LeaderElector(kube, RELEASE_NS, RELEASE, "a", lease_s=3, renew_s=1, retry_s=0.2)
        b = LeaderElector(kube, RELEASE_NS, RELEASE, "b", lease_s=3, renew_s=1, retry_s=0.2)
        assert a.try_acquire() and not b.try_acquire()  # create, then get
        assert a._attempt(renewing=True, timeout_s=2) is True  # update
        a.release()
        assert b.try_acquire()  # get and update by name
        b.release()
    finally:
        upgrade(VALUES)
