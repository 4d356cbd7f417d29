"""Container environment: plain values, Secret references, download credentials, and merging with the user's."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tuneops.api.common import SecretKeyRef
from tuneops.render.volumes import parse

AWS_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)


def env_value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def env_secret(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"key": key, "name": secret}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def credential_env(secret: SecretKeyRef | None, uris: Iterable[str | None]) -> list[dict[str, Any]]:
    """Credentials for downloads, only ever as env valueFrom.

    HF_TOKEN comes from the referenced key when any URI is hf://. For s3:// the same Secret is read for the
    standard AWS_* keys (each optional, so a cluster using workload identity needs none of them).
    """
    if secret is None:
        return []
    schemes = {parse(u).scheme for u in uris if u}
    out: list[dict[str, Any]] = []
    if "hf" in schemes:
        out.append(env_secret("HF_TOKEN", secret.name, secret.key))
    if "s3" in schemes:
        out += [env_secret(k, secret.name, k, optional=True) for k in AWS_KEYS]
    return out


def merge_env(
    ours: Iterable[Mapping[str, Any]], theirs: Iterable[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Env sorted by name; a user-supplied variable replaces one of ours with the same name."""
    by_name: dict[str, dict[str, Any]] = {str(e["name"]): dict(e) for e in ours}
    for e in theirs:
        by_name[str(e["name"])] = dict(e)
    return [by_name[n] for n in sorted(by_name)]
