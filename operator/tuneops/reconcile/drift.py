"""Drift: whether a child still holds every value the operator sets on it.

The live object carries what the API server added (defaults, status, other managers' fields), so the check is
"desired is contained in live": every field of the desired manifest (its labels and annotations, and every
top-level field but apiVersion, kind and metadata: spec, data, ...) must be in the live object with the same
value. Maps are compared key by key (keys only live has are someone else's, or defaults); lists whose desired
items all carry a `name` (containers, env, volumes, ports) item by name; any other list item by item and of the
same length (args, NetworkPolicy rules: atomic lists, which a forced apply replaces whole). An empty or false
desired value matches an absent one (the server drops them), and quantities match by value (`0.5` = `500m`).

A few fields the renderer leaves to the server's default would let an edit go unseen, and an apply that does not
name a field never takes it back from whoever set it; `pin_defaults` writes those defaults into the manifest the
operator applies (a Pod's ServiceAccount, host namespaces), so they are both compared and owned.

Checking costs no request: the live object comes from the informers' memory. `Applied` remembers the
resourceVersion each apply answered with, so an object nobody touched since is not compared at all, and a value
the server normalises in a way the comparison does not know costs at most one idempotent apply per change of the
object, never a loop.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

# Pod spec fields the renderer leaves unset, meaning the server's default; pinned so an edit is seen and undone.
POD_DEFAULTS: dict[str, Any] = {
    "serviceAccountName": "default",
    "hostNetwork": False,
    "hostPID": False,
    "hostIPC": False,
}
# Differences listed by `differences` before it stops looking.
MAX_DIFFERENCES = 8


def pin_defaults(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with every Pod spec in it (a Deployment's template, a LeaderWorkerSet's leader and worker
    templates) holding POD_DEFAULTS where it sets nothing else. Changes `manifest` in place and returns it."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                for key, value in POD_DEFAULTS.items():
                    node.setdefault(key, value)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(manifest.get("spec"))
    return manifest


def differences(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """The paths (at most MAX_DIFFERENCES) where ``live`` does not hold what ``desired`` sets; [] when it does."""
    out: list[str] = []
    meta = desired.get("metadata") or {}
    live_meta = live.get("metadata") or {}
    for key in ("labels", "annotations"):
        if meta.get(key):
            _compare(meta[key], live_meta.get(key), f"metadata.{key}", out)
    for key, want in desired.items():
        if key not in ("apiVersion", "kind", "metadata", "status"):
            _compare(want, live.get(key), key, out)
        if len(out) >= MAX_DIFFERENCES:
            break
    return out[:MAX_DIFFERENCES]


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value == "" or value == {} or value == []


def _compare(want: Any, have: Any, path: str, out: list[str]) -> None:
    if len(out) >= MAX_DIFFERENCES:
        return
    if _empty(want) and _empty(have):
        return
    if isinstance(want, dict):
        if not isinstance(have, dict):
            out.append(path)
            return
        for key, value in want.items():
            _compare(value, have.get(key), f"{path}.{key}", out)
        return
    if isinstance(want, list):
        if not isinstance(have, list):
            out.append(path)
        elif want and all(isinstance(w, dict) and isinstance(w.get("name"), str) for w in want):
            by_name = {h.get("name"): h for h in have if isinstance(h, dict)}
            for item in want:
                _compare(item, by_name.get(item["name"]), f"{path}[{item['name']}]", out)
        elif len(want) != len(have):
            out.append(path)
        else:
            for i, (w, h) in enumerate(zip(want, have, strict=True)):
                _compare(w, h, f"{path}[{i}]", out)
        return
    if not _same_scalar(want, have):
        out.append(path)


_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|)")
_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}  # fmt: skip


def quantity(value: object) -> Decimal | None:
    """A Kubernetes quantity's value (None: not a quantity)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        return None
    try:
        return Decimal(match.group(1)) * _SUFFIX[match.group(2)]
    except InvalidOperation:
        return None


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return bool(want == have)
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return bool(want == have)
    if isinstance(want, str) != isinstance(have, str) or isinstance(want, str):
        # "1Gi" and "1024Mi", "0.5" and "500m": the server writes quantities in its own canonical form
        a, b = quantity(want), quantity(have)
        return a is not None and a == b
    return False


class Applied:
    """The resourceVersion each apply answered with, by object uid: an object still at that version is as the
    operator left it, and is not compared again. Bounded; the oldest entries go first."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._versions: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def record(self, obj: Mapping[str, Any] | None) -> None:
        meta = (obj or {}).get("metadata") or {}
        uid, version = meta.get("uid"), meta.get("resourceVersion")
        if not (isinstance(uid, str) and isinstance(version, str)):
            return
        with self._lock:
            self._versions[uid] = version
            self._versions.move_to_end(uid)
            while len(self._versions) > self.limit:
                self._versions.popitem(last=False)

    def untouched(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` is still exactly what the operator's own last apply of it answered."""
        meta = obj.get("metadata") or {}
        uid, version = meta.get("uid"), meta.get("resourceVersion")
        with self._lock:
            return isinstance(uid, str) and version is not None and self._versions.get(uid) == version


APPLIED = Applied()


def drifted(desired: Mapping[str, Any], live: Mapping[str, Any], applied: Applied = APPLIED) -> list[str]:
    """Where ``live`` lost what ``desired`` sets ([] when it holds all of it, or is as the operator's own apply
    left it)."""
    if applied.untouched(live):
        return []
    return differences(desired, live)
