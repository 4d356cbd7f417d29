"""What the adapter reconciler remembers about one Pod, written on the Pod as an annotation.

/v1/models names the adapters a server holds and the paths it read them from, not their content: the digest last
loaded under each name is what tells a settled adapter from a same-name update. On the Pod it lives exactly as
long as the Pod, and a restarted operator finds it instead of reloading every adapter once.

Whoever may edit the Pod may edit the annotation, so a value is taken only if it is exactly what
``encode_memory`` could have written, within ``MEMORY_MAX``; anything else reads as no memory (each adapter is
reloaded once, as after a Pod restart), never as an error.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from tuneops.adapters.client import EXCERPT_MAX, excerpt
from tuneops.adapters.types import MAX_MODEL_NAME, DesiredAdapter, FailureRecord, PodMemory

# The API server takes 256 KiB for all of a Pod's annotations; this one keeps to half. The loaded digests of the
# schema's largest fleet (512 adapters with 128-character names) take about 85 KiB.
MEMORY_MAX = 128 << 10
FORMAT = 1
# A digest is kept as 32 hex characters of its sha256 (128 bits): finding two adapters whose digests share them
# takes about 2**64 hashes, so a shortened digest still tells a same-name update from the weights loaded.
DIGEST_CHARS = 32
# FailureRecord.attempts stops at the planner's max_attempts; anything near this bound was not written by us.
ATTEMPTS_MAX = 1000

_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_KEYS = frozenset({"v", "loaded", "failures"})


def short_digest(digest: str) -> str:
    """The form a digest is kept in: printable, at most DIGEST_CHARS long, and unchanged when shortened again."""
    if len(digest) <= DIGEST_CHARS and digest.isprintable():
        return digest
    if _SHA256.fullmatch(digest):
        return digest[len("sha256:") : len("sha256:") + DIGEST_CHARS]
    return hashlib.sha256(digest.encode(errors="surrogatepass")).hexdigest()[:DIGEST_CHARS]


def _name_ok(name: object) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_MODEL_NAME and name.isprintable()


def _digest_ok(digest: object) -> bool:
    return isinstance(digest, str) and len(digest) <= DIGEST_CHARS and digest.isprintable()


def _dump(loaded: Mapping[str, str], failures: Mapping[str, list[Any]]) -> str:
    body: dict[str, Any] = {"v": FORMAT}
    if loaded:
        body["loaded"] = dict(loaded)
    if failures:
        body["failures"] = dict(failures)
    # ASCII only (non-ASCII escaped), so a length in characters is a length in bytes
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _entry_size(name: str, value: Any) -> int:
    """Characters one map entry takes in the dump, its separating comma included."""
    return len(json.dumps({name: value}, separators=(",", ":"))) - 1


def encode_memory(memory: PodMemory, limit: int = MEMORY_MAX) -> str | None:
    """The annotation's value for ``memory`` (None: nothing to remember), at most ``limit`` characters.

    Deterministic, so an unchanged memory is never written again. When the whole memory does not fit, failure
    messages are left out first, then entries in name order (loaded digests before failures): a left-out
    digest costs one reload in place, a left-out failure one more attempt.
    """
    loaded = {n: short_digest(d) for n, d in sorted(memory.loaded.items()) if _name_ok(n)}
    failures = {
        n: [short_digest(f.digest), min(max(f.attempts, 0), ATTEMPTS_MAX), excerpt(f.message)]
        for n, f in sorted(memory.failures.items())
        if _name_ok(n)
    }
    if not loaded and not failures:
        return None
    text = _dump(loaded, failures)
    if len(text) <= limit:
        return text
    failures = {n: [d, a, ""] for n, (d, a, _) in failures.items()}
    text = _dump(loaded, failures)
    if len(text) <= limit:
        return text
    budget = limit - len(_dump({"": ""}, {"": ["", 0, ""]}))

    def fits(name: str, value: Any) -> bool:
        nonlocal budget
        size = _entry_size(name, value)
        if size > budget:
            return False
        budget -= size
        return True

    kept_loaded = {n: d for n, d in loaded.items() if fits(n, d)}
    kept_failures = {n: f for n, f in failures.items() if fits(n, f)}
    return _dump(kept_loaded, kept_failures) if kept_loaded or kept_failures else None


def decode_memory(value: object, desired: Mapping[str, DesiredAdapter]) -> PodMemory:
    """The memory an annotation value holds; empty for a value ``encode_memory`` would not have written.

    A kept digest that is the short form of the digest desired under the same name reads as that digest, so the
    planner compares full digests; any other kept digest stays short and matches nothing desired.
    """
    if not isinstance(value, str) or len(value) > MEMORY_MAX:
        return PodMemory()
    try:
        body = json.loads(value)
        return _parse(body, desired)
    except (ValueError, TypeError, RecursionError):
        return PodMemory()


def _parse(body: object, desired: Mapping[str, DesiredAdapter]) -> PodMemory:
    if not isinstance(body, dict) or not set(body) <= _KEYS:
        raise ValueError("not a memory")
    version = body.get("v")
    if type(version) is not int or version != FORMAT:
        raise ValueError(f"format {version!r}")
    loaded_in, failures_in = body.get("loaded", {}), body.get("failures", {})
    if not isinstance(loaded_in, dict) or not isinstance(failures_in, dict):
        raise ValueError("loaded and failures are maps")

    def full(name: str, kept: str) -> str:
        want = desired.get(name)
        return want.digest if want is not None and short_digest(want.digest) == kept else kept

    loaded: dict[str, str] = {}
    for name, digest in loaded_in.items():
        if not _name_ok(name) or not _digest_ok(digest):
            raise ValueError("loaded entry")
        loaded[name] = full(name, digest)
    failures: dict[str, FailureRecord] = {}
    for name, record in failures_in.items():
        if not _name_ok(name) or not isinstance(record, list) or len(record) != 3:
            raise ValueError("failure entry")
        digest, attempts, message = record
        if not _digest_ok(digest) or type(attempts) is not int or not 0 <= attempts <= ATTEMPTS_MAX:
            raise ValueError("failure entry")
        if not isinstance(message, str) or len(message) > EXCERPT_MAX or not message.isprintable():
            raise ValueError("failure message")
        failures[name] = FailureRecord(digest=full(name, digest), attempts=attempts, message=message)
    return PodMemory(loaded=loaded, failures=failures)
