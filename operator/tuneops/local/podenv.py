"""A container's process environment and command line, computed from its Pod spec alone (pure functions)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneops.local.runtimes import Runtime
from tuneops.local.translate import (
    Mount,
    PathRewriter,
    expand,
    field_value,
    quantity,
    resource_value,
    rewrite_listen_host,
)

Obj = dict[str, Any]

HOST_IP = "127.0.0.1"

ConfigLookup = Callable[[str, str, bool], Mapping[str, bytes]]
"""(kind "secrets" | "configmaps", name, optional) -> the object's data; raises ConfigError when required and absent."""


class ConfigError(Exception):
    """A Secret or ConfigMap a container needs is missing: the container waits (CreateContainerConfigError)."""


@dataclass(frozen=True)
class Placement:
    """Where the local node runs a Pod: what its containers' environment refers to."""

    pod: Obj
    ip: str
    home: str
    api_host: str
    api_port: int
    allocatable: Mapping[str, str] = field(default_factory=dict)
    host_ip: str = HOST_IP

    @property
    def namespace(self) -> str:
        return str((self.pod.get("metadata") or {}).get("namespace") or "")

    @property
    def name(self) -> str:
        return str((self.pod.get("metadata") or {}).get("name") or "")

    def containers(self) -> list[Obj]:
        spec = self.pod.get("spec") or {}
        return [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]


def resource_env(spec: Obj, resource: str, divisor: Any, allocatable: Mapping[str, str]) -> str:
    """A resourceFieldRef's value; an unset limit reads as the node's allocatable, as on a real node."""
    value = resource_value(spec, resource, str(divisor) if divisor is not None else None)
    if value == "0" and resource.startswith("limits."):
        name = resource.split(".", 1)[1]
        alloc = allocatable.get(name)
        if alloc is not None:
            return resource_value({"resources": {"limits": {name: alloc}}}, resource, divisor)
    return value


def _env_from(spec: Obj, config: ConfigLookup) -> dict[str, str]:
    out: dict[str, str] = {}
    for source in spec.get("envFrom") or []:
        prefix = str(source.get("prefix") or "")
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = config("configmaps", str(ref["name"]), bool(ref.get("optional")))
        else:
            ref = source.get("secretRef") or {}
            data = config("secrets", str(ref.get("name")), bool(ref.get("optional")))
        for k, v in data.items():
            out[prefix + k] = v.decode(errors="replace")
    return out


def _value_from(spec: Obj, src: Obj, place: Placement, config: ConfigLookup) -> str | None:
    """One `valueFrom`: None when it names an optional key that is absent (the variable stays unset)."""
    if "fieldRef" in src:
        return field_value(place.pod, str(src["fieldRef"]["fieldPath"]), place.ip, place.host_ip)
    if "resourceFieldRef" in src:
        ref = src["resourceFieldRef"]
        target = spec
        if ref.get("containerName"):
            target = next((x for x in place.containers() if x.get("name") == ref["containerName"]), spec)
        return resource_env(target, str(ref["resource"]), ref.get("divisor"), place.allocatable)
    if "secretKeyRef" in src or "configMapKeyRef" in src:
        kind = "secrets" if "secretKeyRef" in src else "configmaps"
        ref = src.get("secretKeyRef") or src.get("configMapKeyRef") or {}
        data = config(kind, str(ref["name"]), bool(ref.get("optional")))
        key = str(ref["key"])
        if key in data:
            return data[key].decode(errors="replace")
        if not ref.get("optional"):
            kind_name = "Secret" if kind == "secrets" else "ConfigMap"
            raise ConfigError(f"couldn't find key {key} in {kind_name} {place.namespace}/{ref['name']}")
    return None


def declared_env(spec: Obj, place: Placement, config: ConfigLookup) -> dict[str, str]:
    """The container's own variables (envFrom, then env with $(VAR) expansion), before any path rewrite."""
    env = _env_from(spec, config)
    for item in spec.get("env") or []:
        name = str(item["name"])
        if "value" in item or "valueFrom" not in item:
            env[name] = expand(str(item.get("value") or ""), env)
            continue
        value = _value_from(spec, item["valueFrom"], place, config)
        if value is not None:
            env[name] = value
    return env


def process_env(
    spec: Obj,
    declared: Mapping[str, str],
    base: Mapping[str, str],
    rewriter: PathRewriter,
    place: Placement,
    mounts: Sequence[Mount] = (),
) -> dict[str, str]:
    """The process's whole environment: the image's, the kubelet's, then the container's (paths rewritten)."""
    env = dict(base)
    env.update(
        {
            "HOME": place.home,
            "HOSTNAME": place.name,
            "KUBERNETES_SERVICE_HOST": place.api_host,
            "KUBERNETES_SERVICE_PORT": str(place.api_port),
        }
    )
    for key, value in declared.items():
        env[key] = place.ip if value in ("0.0.0.0", "::") else rewriter.rewrite(value)
    limit = ((spec.get("resources") or {}).get("limits") or {}).get("cpu")
    if limit is not None and "OMP_NUM_THREADS" not in declared:
        # No cgroup enforces the CPU limit here; the thread count is what keeps a process within it.
        env["OMP_NUM_THREADS"] = str(max(1, math.ceil(quantity(limit))))
    tmp = next((m.host_path for m in mounts if m.container_path.rstrip("/") == "/tmp"), None)
    if tmp and "TMPDIR" not in declared:
        env["TMPDIR"] = tmp
    return env


def command_line(
    spec: Obj, runtime: Runtime, env: Mapping[str, str], rewriter: PathRewriter, ip: str
) -> list[str]:
    """command + args with $(VAR) expanded, paths rewritten, the image's entrypoint when there is no
    command, the program resolved in the runtime and wildcard listen addresses replaced by the Pod's."""
    command = [str(x) for x in spec.get("command") or []]
    args = [str(x) for x in spec.get("args") or []]
    expanded = [rewriter.rewrite(expand(x, env)) for x in command + args]
    command, args = expanded[: len(command)], expanded[len(command) :]
    if not command:
        if not runtime.entrypoint:
            raise ConfigError(f"image {spec.get('image')} has no entrypoint in runtime {runtime.name}")
        command = list(runtime.entrypoint)
    program = runtime.resolve(command[0])
    if program is None:
        raise FileNotFoundError(
            f"executable {command[0]!r} not found in runtime {runtime.name} (PATH {runtime.search_path()})"
        )
    return rewrite_listen_host([program, *command[1:], *args], ip)
