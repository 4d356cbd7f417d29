"""The control plane's credentials on disk: a CA and serving certificate, service-account keys, static tokens
and kubeconfigs."""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

ADMIN_USER = "admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
MASTERS_GROUP = "system:masters"
# The API server's identity towards kubelets (the subject of pki/kubelet-client.crt).
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped."""


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ControlPlaneError("openssl is required to create the control plane's keys; install it")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def ensure_pki(pki: Path) -> None:
    """A CA, the API server's serving and kubelet-client certificates and the service-account key pair, made once
    and then kept."""
    if not (pki / "ca.crt").exists():
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "3650", "-subj", "/CN=tuneops-local-ca", cwd=pki,
        )  # fmt: skip
    if not (pki / "apiserver.crt").exists():
        ext = pki / "apiserver.ext"
        ext.write_text(
            "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
        )
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
            "-subj", "/CN=kube-apiserver", cwd=pki,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "apiserver.crt", "-days", "3650", "-extfile", "apiserver.ext", cwd=pki,
        )  # fmt: skip
    if not (pki / "kubelet-client.crt").exists():
        # What the API server presents to a node's kubelet API (`kubectl logs`); the local node admits it.
        ext = pki / "kubelet-client.ext"
        ext.write_text("extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        _openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "kubelet-client.key", "-out", "kubelet-client.csr",
            "-subj", f"/O={MASTERS_GROUP}/CN={KUBELET_CLIENT_USER}", cwd=pki,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", "kubelet-client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "kubelet-client.crt", "-days", "3650", "-extfile", "kubelet-client.ext", cwd=pki,
        )  # fmt: skip
    if not (pki / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for key in pki.glob("*.key"):
        key.chmod(0o600)


def read_tokens(path: Path) -> dict[str, str]:
    """user -> token from a static token file."""
    tokens: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(",", 3)
            if len(parts) >= 2:
                tokens[parts[1]] = parts[0]
    return tokens


def write_tokens(path: Path, tokens: dict[str, str], users: Mapping[str, Sequence[str]]) -> None:
    """The static token file for the admin, the controller manager and `users` (name -> groups); a user
    without a token in `tokens` gets a new one there."""
    wanted = {ADMIN_USER: [MASTERS_GROUP], CONTROLLER_MANAGER_USER: [MASTERS_GROUP]}
    wanted.update({u: list(g) for u, g in users.items()})
    for user in wanted:
        tokens.setdefault(user, secrets.token_hex(24))
    # Format: token,user,uid,"group1,group2"
    lines = [f'{tokens[u]},{u},{u},"{",".join(g)}"' for u, g in wanted.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca_path: Path, user: str, token: str) -> None:
    ca = base64.b64encode(ca_path.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "tuneops-local", "cluster": {"server": server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "tuneops-local", "context": {"cluster": "tuneops-local", "user": user}}],
        "current-context": "tuneops-local",
        "preferences": {},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.chmod(0o600)
    tmp.replace(path)


def safe_name(user: str) -> str:
    """A user name as part of a file name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user)
