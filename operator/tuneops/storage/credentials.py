"""Which credentials read or write a URI: the Secret of its own source, never another source's.

A worker Pod may read sources guarded by different Secrets (a gated base model on the Hub, an adapter in one
bucket, an output in another). The renderer gives each such source its own environment variables under a
prefix, `TUNEOPS_<ROLE>_HF_TOKEN` and `TUNEOPS_<ROLE>_AWS_*`, and maps its URI to the role in
`TUNEOPS_CREDENTIALS` (JSON, `{"s3://bucket/prefix": "ADAPTER"}`). A hf:// URI that no role claims is read
with the process's plain HF_TOKEN.

Ambient AWS credentials. An s3:// source whose Secret holds no keys, or that has no Secret, would otherwise be
read with whatever boto3's default chain finds: AWS_* keys in the environment, shared credential files, a web
identity token (IRSA), container credentials (EKS Pod Identity) or the node's instance profile. That identity
is the Pod's or the node's, not the source's, so it is used only when $TUNEOPS_AMBIENT_CREDENTIALS is `1`: the
renderer sets it only when the operator config allows ambient credentials (allowAmbientCredentials), and a
person running `tuneops worker ...` by hand sets it to use their own environment. Otherwise such a source is
read with unsigned (anonymous) requests, from a session whose credential chain is empty: a public bucket still
works, no credential of the node is looked up, and an access denied names the missing Secret (storage.remote).
Unsigned rather than a refusal before any request, because anonymous reads of public buckets are legitimate
and lend nothing; the operator refuses a spec that names an s3:// source without a Secret before any Pod
exists (tuneops.validation.credentials), so this is the worker's own line of defence.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from tuneops.storage.uri import InputError

CREDENTIALS_ENV = "TUNEOPS_CREDENTIALS"
AMBIENT_ENV = "TUNEOPS_AMBIENT_CREDENTIALS"
# How a client for an s3:// source signs its requests (s3_signing).
SECRET = "secret"
AMBIENT = "ambient"
UNSIGNED = "unsigned"
AWS_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)


def credential_prefix(role: str) -> str:
    """The environment prefix of one source's credentials (`base` -> `TUNEOPS_BASE_`)."""
    return "TUNEOPS_" + re.sub(r"[^A-Z0-9]+", "_", role.upper()).strip("_") + "_"


def _roles() -> dict[str, str]:
    raw = os.environ.get(CREDENTIALS_ENV, "").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise ValueError(f"{CREDENTIALS_ENV} is not a JSON object of URI -> role") from None
    if not isinstance(data, dict):
        raise ValueError(f"{CREDENTIALS_ENV} is not a JSON object of URI -> role")
    return {str(k): str(v) for k, v in data.items()}


def role_for(uri: str) -> str | None:
    """The role whose URI is `uri` or contains it (a file inside an artifact), the longest match first."""
    best: tuple[int, str] | None = None
    for source, role in _roles().items():
        base = source.rstrip("/")
        if (uri == source or uri.rstrip("/") == base or uri.startswith(base + "/")) and (
            best is None or len(base) > best[0]
        ):
            best = (len(base), role)
    return best[1] if best else None


def _get(prefix: str, key: str) -> str | None:
    return os.environ.get(prefix + key) or None


def hf_token(uri: str) -> str | None:
    """The Hub token for `uri`: its source's own, else HF_TOKEN / HUGGING_FACE_HUB_TOKEN."""
    role = role_for(uri)
    if role is not None:
        return _get(credential_prefix(role), "HF_TOKEN")
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def hf_endpoint(uri: str) -> str | None:
    """The Hub endpoint for `uri`: its source's own (a mirror named in its Secret), else HF_ENDPOINT."""
    role = role_for(uri)
    own = _get(credential_prefix(role), "HF_ENDPOINT") if role is not None else None
    return own or os.environ.get("HF_ENDPOINT") or None


def ambient_allowed() -> bool:
    """Whether a source without keys of its own may use the ambient AWS identity ($TUNEOPS_AMBIENT_CREDENTIALS)."""
    return os.environ.get(AMBIENT_ENV, "").strip().lower() in ("1", "true", "yes")


def s3_signing(args: dict[str, Any]) -> str:
    """How a client made with `args` (s3_client_args) signs: with the Secret's keys, with the ambient identity
    (only when allowed), else unsigned."""
    if args.get("aws_access_key_id") and args.get("aws_secret_access_key"):
        return SECRET
    return AMBIENT if ambient_allowed() else UNSIGNED


def s3_client_args(uri: str) -> dict[str, Any]:
    """Keyword arguments for boto3's S3 client for `uri`. A source with its own Secret uses that Secret's keys,
    region and endpoint; without keys, see s3_signing (the ambient identity only when allowed)."""
    role = role_for(uri)
    if role is None:
        return {}
    prefix = credential_prefix(role)
    out: dict[str, Any] = {}
    key_id, secret = _get(prefix, "AWS_ACCESS_KEY_ID"), _get(prefix, "AWS_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        have, missing = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")[:: 1 if key_id else -1]
        raise InputError(f"{uri}: the Secret of this source ({role}) has {have} but no {missing}")
    if key_id and secret:
        out["aws_access_key_id"] = key_id
        out["aws_secret_access_key"] = secret
        out["aws_session_token"] = _get(prefix, "AWS_SESSION_TOKEN")
    if region := _get(prefix, "AWS_REGION"):
        out["region_name"] = region
    if endpoint := _get(prefix, "AWS_ENDPOINT_URL"):
        out["endpoint_url"] = endpoint
    return out
