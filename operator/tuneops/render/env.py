"""Container environment: plain values, Secret references, per-source credentials, and merging with the user's."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tuneops.api.common import SecretKeyRef
from tuneops.render.volumes import parse
from tuneops.storage.credentials import AMBIENT_ENV, AWS_KEYS, CREDENTIALS_ENV, credential_prefix


def env_value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def env_secret(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"key": key, "name": secret}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


@dataclass(frozen=True)
class Source:
    """One URI a container reads or writes, and the Secret with its credentials (None: the Pod's own identity)."""

    role: str
    uri: str | None
    secret: SecretKeyRef | None


def source_env(sources: Iterable[Source], *, ambient: bool = False) -> list[dict[str, Any]]:
    """Credentials per source, only ever as env valueFrom: each Secret reaches only the URI it is named for.

    A source with a Secret gets its own variables, TUNEOPS_<ROLE>_HF_TOKEN for hf:// (from the referenced key)
    and TUNEOPS_<ROLE>_AWS_* for s3:// (each optional, so a Secret may hold just an endpoint or just keys),
    and TUNEOPS_CREDENTIALS maps its URI to the role; the worker's storage reads them per URI.

    `ambient` (the operator config's allowAmbientCredentials) sets TUNEOPS_AMBIENT_CREDENTIALS=1 in a container
    with an s3:// source: only then may the worker read a source without keys of its own with the Pod's or
    node's AWS identity (else its requests are unsigned; see storage.credentials).
    """
    sources = list(sources)
    roles: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    if ambient and any(src.uri and parse(src.uri).scheme == "s3" for src in sources):
        out.append(env_value(AMBIENT_ENV, "1"))
    for src in sources:
        if src.secret is None or not src.uri or src.uri in roles:
            continue
        scheme = parse(src.uri).scheme
        prefix = credential_prefix(src.role)
        if scheme == "hf":
            out.append(env_secret(f"{prefix}HF_TOKEN", src.secret.name, src.secret.key))
        elif scheme == "s3":
            out += [env_secret(prefix + k, src.secret.name, k, optional=True) for k in AWS_KEYS]
        else:
            continue
        roles[src.uri] = src.role
    if roles:
        out.append(env_value(CREDENTIALS_ENV, json.dumps(roles, sort_keys=True, separators=(",", ":"))))
    return out


def merge_env(
    ours: Iterable[Mapping[str, Any]], theirs: Iterable[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Env sorted by name. Ours win: a spec's variable never replaces one the operator sets (its API key, caches,
    credentials). The operator refuses such a spec first (validation/policy.py); this keeps a rendered Pod true
    to the operator even if a refusal were missed."""
    by_name: dict[str, dict[str, Any]] = {str(e["name"]): dict(e) for e in theirs}
    by_name.update((str(e["name"]), dict(e)) for e in ours)
    return [by_name[n] for n in sorted(by_name)]
