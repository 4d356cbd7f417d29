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
# The content hash in a Job's name (`<cr>-<step>-<spechash8>`): it tells a spec's Jobs apart, not owners.
HASH_LEN = 8
# The hash that stands for a name that could not be used as written: 64 bits, so that finding another name
# with the same hash (a second preimage, which a tenant would need to take over a given resource's children)
# is out of reach offline (2^64 tries), where 32 bits takes minutes on one GPU.
NAME_HASH_LEN = 16
# Between the readable part of a hashed name and its hash. A name used as written never contains it.
MARK = "--"

# RFC 1035 label (what Service names must be; Deployments, ConfigMaps and Jobs accept it too), lowercase.
_DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# A label value (may be empty).
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _hashed(written: str, readable: str, limit: int) -> str:
    """`readable[:cut]--<hash16 of written>`: always carries the mark, and is told apart by the hash alone."""
    keep = limit - len(MARK) - NAME_HASH_LEN
    return f"{readable[:keep].rstrip('-._')}{MARK}{content_hash(written)[:NAME_HASH_LEN]}"


def bounded_name(*parts: str, digest: str | None = None, limit: int = MAX_NAME) -> str:
    """The name `part1-part2[-digest8]` (`written`) as a DNS label of at most `limit` characters.

    Literal or hashed, never both:

    - **literal**: `written` itself, when it already is an RFC 1035 label (lowercase letters, digits and
      dashes, starting with a letter: Service names must), fits in `limit` and does not contain `--`;
    - **hashed**: otherwise `<readable>--<hash16>`: `readable` is `written` lowercased, every run of other
      characters (dashes included) turned into one dash, a `t` in front when it does not start with a
      letter, cut to leave room; `hash16` is 16 hex characters (64 bits) of the sha256 of `written`.

    A literal name never contains `--` and a hashed one always does, so a literal never equals a hashed name.
    Two literal names are equal only when their `written` are; two hashed names only when their hashes are,
    which for different `written` takes a 64-bit second preimage (the readable part plays no part in telling
    names apart). So `written -> name` is one-to-one, and each caller only has to show that its `written` is
    one-to-one in its owner (see `step_name`, `serving.types.workload_name`, `serving.vllm._configmap_name`):
    `llama.v2` is `llama-v2--<hash16>`, which a resource named so literally cannot have (it contains `--`),
    and `llama-v2` stays `llama-v2`.
    """
    written = "-".join([p for p in parts if p] + ([digest[:HASH_LEN]] if digest else []))
    if len(written) <= limit and MARK not in written and _DNS_1035.fullmatch(written):
        return written
    readable = re.sub(r"[^a-z0-9]+", "-", written.lower()).strip("-")
    if not readable[:1].isalpha():
        readable = "t" + readable
    return _hashed(written, readable, limit)


def step_name(cr_name: str, step: str, spec_hash: str) -> str:
    """Content-addressed child name `<cr>-<step>-<hash8>` (a restarted operator finds the same Job).

    One-to-one in (owner, step, spec): `written` is `<cr>-<step>-<hash8>` where neither the step (a fixed
    word without a dash) nor the hash (hex) contains a dash, so the last two dash-separated parts are the step
    and the hash and the rest is the resource's name. Owners of different kinds in one namespace may share a
    name, but their steps differ (FineTunedModel: inspect, merge; QuantizationJob: quantize, evaluate), so
    their Jobs never share a name either. `bounded_name` keeps the map one-to-one.
    """
    assert "-" not in step, step
    return bounded_name(cr_name, step, digest=spec_hash)


def label_value(text: str) -> str:
    """`text` as a label value (`app.kubernetes.io/instance`), one-to-one as `bounded_name` is.

    Literal when `text` already is a label value of at most 63 characters without `--` (every resource name
    of at most 63 characters without `--` is); otherwise `<readable>--<hash16 of text>` (readable: runs of
    characters a label value does not take turned into one dash, cut to leave room). A literal value never
    contains `--` and a hashed one always does; two hashed values are equal only with a 64-bit second
    preimage. So a crafted 63-character name can never equal the cut-and-hashed value of a longer name.
    """
    if len(text) <= MAX_NAME and MARK not in text and _LABEL_VALUE.fullmatch(text):
        return text
    readable = re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-._") or "x"
    return _hashed(text, readable, MAX_NAME)


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """The stable subset of labels used in selectors (immutable on Deployments, so never extended).

    One owner's selector is no other's: `label_value` is one-to-one in the owner's name, and the kind and the
    component are in it too (a FineTunedModel, a QuantizationJob and an InferenceService may share a name).
    The owner's uid is not in it, on purpose: it would change the selector of every Deployment made before,
    and a Deployment's selector cannot change (each would have to be deleted and made again, an outage per
    service). Where the instance value changed with the hashed scheme (names over 63 characters or with
    `--`), the Deployment's name changed too, so the new selector goes on a new Deployment and the old one is
    deleted as no longer desired.
    """
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
