"""The control plane's processes: etcd, kube-apiserver and kube-controller-manager, as command lines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tuneops.local.audit import AUDIT_POLICY

HOST = "127.0.0.1"
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"

# Controllers that need a cloud, nodes with pod CIDRs or a service proxy; without nodes they only log noise.
# `endpoint` is off too: local Pods have loopback addresses (127.X.Y.Z), which the API server refuses in an
# Endpoints object ("may not be in the loopback range"), so it only emitted a FailedToUpdateEndpoint Warning
# per Service. EndpointSlices accept them: the `endpointslice` controller lists each Service's Pods there.
CONTROLLERS = "*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-endpoint"
KUBELET_ADDRESS_TYPES = "InternalIP,Hostname,InternalDNS,ExternalDNS,ExternalIP"
# ttlSecondsAfterFinished is alpha in 1.20; enabling it keeps the field instead of silently dropping it.
FEATURE_GATES = "TTLAfterFinished=true"
# Pods get no injected service-account token volume: the local node has no use for one, and the admission
# plugin would otherwise reject Pods created before the namespace's `default` ServiceAccount exists.
DISABLED_ADMISSION = "ServiceAccount"


@dataclass
class Ports:
    etcd_client: int = 0
    etcd_peer: int = 0
    apiserver: int = 0

    @property
    def etcd_url(self) -> str:
        return f"http://{HOST}:{self.etcd_client}"


def etcd_argv(etcd: str, root: Path, ports: Ports) -> list[str]:
    client, peer = ports.etcd_url, f"http://{HOST}:{ports.etcd_peer}"
    return [
        etcd,
        "--name=tuneops",
        f"--data-dir={root / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=tuneops={peer}",
        "--initial-cluster-state=new",
        "--logger=zap",
        "--log-level=warn",
        # Keep the database small and bounded over long `tuneops local` sessions.
        "--auto-compaction-mode=revision",
        "--auto-compaction-retention=1000",
        "--snapshot-count=10000",
    ]


def apiserver_argv(
    binary: str,
    root: Path,
    ports: Ports,
    authorization_mode: str,
    audit_log: Path | None,
    extra: Sequence[str] = (),
) -> list[str]:
    """kube-apiserver's command line; with an `audit_log`, also writes the audit policy it reads."""
    pki = root / "pki"
    argv = [
        binary,
        f"--etcd-servers={ports.etcd_url}",
        f"--bind-address={HOST}",
        f"--secure-port={ports.apiserver}",
        f"--cert-dir={pki}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        # `kubectl logs` goes through the node's kubelet API: present a CA-signed client certificate (the local
        # node admits only that), and dial the Node's InternalIP first (its Hostname resolves nowhere).
        f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'kubelet-client.key'}",
        f"--kubelet-preferred-address-types={KUBELET_ADDRESS_TYPES}",
        f"--token-auth-file={root / 'tokens.csv'}",
        f"--authorization-mode={authorization_mode}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--disable-admission-plugins={DISABLED_ADMISSION}",
        f"--feature-gates={FEATURE_GATES}",
        "--allow-privileged=true",
        "--profiling=false",
        "--anonymous-auth=false",
        "--logtostderr=true",
        "--v=0",
    ]
    if audit_log is not None:
        policy = root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        argv += [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            # Blocking: an event is in the file before the response returns, so counts are exact.
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
        ]
    return argv + list(extra)


def controller_manager_argv(
    binary: str, root: Path, kubeconfig: Path, extra: Sequence[str] = ()
) -> list[str]:
    pki = root / "pki"
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--controllers={CONTROLLERS}",
        f"--feature-gates={FEATURE_GATES}",
        "--leader-elect=false",
        "--use-service-account-credentials=false",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        # Lets the CSR signer work, so certificate requests behave as on a real cluster.
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # No serving ports: nothing scrapes them here, and fixed defaults would collide between instances.
        "--port=0",
        "--secure-port=0",
        "--logtostderr=true",
        "--v=0",
        *extra,
    ]
