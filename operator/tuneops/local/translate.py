"""Pure translations from a Pod spec to a local process: quantities, $(VAR) expansion, path and host rewrites."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")

# Flags after which a wildcard listen address is replaced by the Pod's own loopback address.
HOST_FLAGS = frozenset({"--host", "--bind", "--bind-address", "--address", "--listen", "--listen-address"})
WILDCARDS = frozenset({"0.0.0.0", "::", "[::]"})


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("500m", "2", "8Gi", "1e3") as a number."""
    if isinstance(value, int | float):
        return float(value)
    m = _QUANTITY.match(str(value).strip())
    if not m or (m.group(2) and m.group(2) not in _SUFFIXES):
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _SUFFIXES.get(m.group(2), 1)


def resource_value(container: Mapping[str, Any], resource: str, divisor: str | None = None) -> str:
    """What a resourceFieldRef yields: the limit (or request), divided and rounded up as the kubelet does.

    An unset CPU or memory limit falls back to the node's allocatable in a real cluster; here the caller
    passes that in through the container's limits when it matters, else the result is "0".
    """
    section, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    table = resources.get(section) or {}
    raw = table.get(name)
    if raw is None and section == "limits":
        raw = (resources.get("requests") or {}).get(name)
    if raw is None:
        return "0"
    value = quantity(raw)
    # The API server defaults an unset divisor to "0", which means 1.
    div = (quantity(divisor) if divisor else 0.0) or 1.0
    return str(max(1, math.ceil(value / div)) if value > 0 else 0)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, undefined ones kept, `$$` escapes."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, text)


@dataclass(frozen=True)
class Mount:
    """A path as the container sees it and the host path that stands in for it."""

    container_path: str
    host_path: str


class PathRewriter:
    """Replaces container paths by host paths inside strings (whole path components only).

    `keep` lists host prefixes that are already host paths (the node's own folders): a string under one
    of them is left alone even when a shorter container mount (e.g. /tmp) would match its start.
    """

    def __init__(self, mounts: Sequence[Mount], keep: Sequence[str] = ()) -> None:
        table: dict[str, str] = {}
        for prefix in keep:
            table[prefix.rstrip("/") or "/"] = prefix.rstrip("/") or "/"
        for m in mounts:
            table[m.container_path.rstrip("/") or "/"] = m.host_path.rstrip("/") or "/"
        self._table = table
        # Longest first, so /mnt/pvc/models wins over /mnt/pvc and a kept host prefix over /tmp.
        keys = sorted((k for k in table if k != "/"), key=len, reverse=True)
        self._pattern = (
            re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(k) for k in keys) + r")(?=$|[/\s\"',:;=\]})])")
            if keys
            else None
        )

    def rewrite(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self._table[m.group(1)], text)

    def host_path(self, container_path: str) -> str:
        """The host path for an absolute container path (e.g. a workingDir)."""
        return self.rewrite(container_path)


_WILDCARD_URL = re.compile(r"(?<=://)(0\.0\.0\.0|\[::\])(?=[:/]|$)")


def rewrite_listen_host(args: Sequence[str], ip: str) -> list[str]:
    """`--host 0.0.0.0` and `--host=0.0.0.0` (and the like) become the Pod's address, as does a wildcard
    host in a URL value (`--liveness=http://0.0.0.0:8080/healthz`): all Pods here share one network."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if arg in WILDCARDS and i > 0 and args[i - 1] in HOST_FLAGS:
            out.append(ip)
            continue
        flag, eq, value = arg.partition("=")
        if eq and flag in HOST_FLAGS and value in WILDCARDS:
            out.append(f"{flag}={ip}")
            continue
        out.append(_WILDCARD_URL.sub(ip, arg) if arg.startswith("-") else arg)
    return out


def field_value(pod: Mapping[str, Any], path: str, pod_ip: str, host_ip: str) -> str:
    """A fieldRef (metadata.name, metadata.labels['x'], status.podIP, spec.nodeName, ...)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple: dict[str, Any] = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    if path in ("metadata.labels", "metadata.annotations"):
        values = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(values.items()))
    raise ValueError(f"unsupported fieldRef {path!r}")


def requests_gpu(pod: Mapping[str, Any]) -> str | None:
    """The name of the first GPU-like extended resource a container asks for (e.g. nvidia.com/gpu)."""
    spec = pod.get("spec") or {}
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        resources = c.get("resources") or {}
        for section in ("limits", "requests"):
            for name, value in (resources.get(section) or {}).items():
                if name.endswith("/gpu") and quantity(value) > 0:
                    return str(name)
    return None
