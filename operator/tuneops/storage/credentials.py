"""Which credentials read or write a URI: the Secret of its own source, never another source's.

A worker Pod may read sources guarded by different Secrets (a gated base model on the Hub, an adapter in one
bucket, an output in another). The renderer gives each such source its own environment variables under a
prefix, `TUNEOPS_<ROLE>_HF_TOKEN` and `TUNEOPS_<ROLE>_AWS_*`, and maps its URI to the role in
`TUNEOPS_CREDENTIALS` (JSON, `{"s3://bucket/prefix": "ADAPTER"}`). A URI that no role claims is used with the
process's plain environment (HF_TOKEN, the AWS default chain), which is also how the workers run by hand.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from tuneops.storage.uri import InputError

CREDENTIALS_ENV = "TUNEOPS_CREDENTIALS"
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


def s3_client_args(uri: str) -> dict[str, Any]:
    """Keyword arguments for boto3's S3 client for `uri`. A source with its own Secret uses that Secret's keys,
    region and endpoint; what it leaves out (no keys: workload identity) falls to boto3's defaults."""
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
