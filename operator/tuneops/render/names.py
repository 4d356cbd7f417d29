"""Names, labels and object metadata: content hashes, bounded DNS names, the standard label set."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from tuneops import labels
from tuneops.render.types import Owner

MAX_NAME = 63
HASH_LEN = 8


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _dns_label(text: str) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return out or "x"


def bounded_name(*parts: str, digest: str | None = None, limit: int = MAX_NAME) -> str:
    """`part1-part2[-digest8]` as a DNS label of at most `limit` characters.

    A name that does not fit is cut and gets a hash of the full name appended, so two long names that share a
    prefix stay distinct. A name that starts with a digit gets a letter prefix (Service names must not). A name
    that had to be changed to become a label gets a hash of the name as written: `llama.v2` and `llama-v2` both
    read `llama-v2` as labels and would otherwise own the same Deployment.
    """
    written = "-".join(p for p in parts if p)
    base = "-".join(_dns_label(p) for p in parts if p)
    if base[0].isdigit():
        base = "t" + base
    if base != written:
        base = f"{base}-{content_hash(written)[:HASH_LEN]}"
    suffix = f"-{digest[:HASH_LEN]}" if digest else ""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    cut = limit - len(suffix) - HASH_LEN - 1
    return f"{base[:cut].rstrip('-')}-{content_hash(base)[:HASH_LEN]}{suffix}"


def step_name(cr_name: str, step: str, spec_hash: str) -> str:
    """Content-addressed child name `<cr>-<step>-<hash8>` (a restarted operator finds the same Job)."""
    return bounded_name(cr_name, step, digest=spec_hash)


def label_value(text: str) -> str:
    """A label value (at most 63 characters, alphanumeric ends); long values are cut and hashed."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(clean) <= MAX_NAME:
        return clean
    return f"{clean[: MAX_NAME - HASH_LEN - 1].rstrip('-._')}-{content_hash(text)[:HASH_LEN]}"


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """The stable subset of labels used in selectors (immutable on Deployments, so never extended)."""
    return {
        labels.COMPONENT: component,
        labels.INSTANCE: label_value(owner.name),
        labels.NAME: "tuneops",
        labels.KIND: owner.kind,
    }


def standard_labels(owner: Owner, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        **selector_labels(owner, component),
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        labels.PART_OF: "tuneops",
        labels.OWNER: owner.uid,
        **(extra or {}),
    }
    return dict(sorted(out.items()))


def metadata(
    owner: Owner,
    name: str,
    component: str,
    *,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "labels": standard_labels(owner, component, extra_labels),
        "name": name,
        "namespace": owner.namespace,
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta
