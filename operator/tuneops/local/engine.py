"""The local node's container mode: a Pod's container as a `podman run` of its image, honouring what a kubelet
honours (command and args, env, volumes, securityContext, limits, termination messages).

Podman runs daemonless as root here, with runc and overlay storage under the tuneops cache (the same storage
`make images` builds into). Containers share the host's network namespace, so a Pod's server binds the Pod's
own loopback address (127.X.Y.Z) as in process mode, and probes and Services reach it the same way.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneops import toolpaths
from tuneops.local.podenv import Placement
from tuneops.local.translate import WILDCARDS, Mount, expand, quantity, rewrite_listen_host

Obj = dict[str, Any]

RUNTIME = "podman"
"""How a Pod's containerID names the runtime (`podman://<id>`), as a kubelet's says `containerd://<id>`."""

# The capabilities a container runtime grants by default (containerd's and podman's default set).
DEFAULT_CAPS = (
    "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP",
    "SETUID", "SYS_CHROOT",
)  # fmt: skip


class EngineError(RuntimeError):
    """The container engine is missing or refused a command."""


NODE_LABEL = "io.tuneops.local.node"
"""Which node (its root folder) started a container: a node that starts removes what an earlier run left."""


def engine_dir() -> Path:
    return toolpaths.cache_dir() / "containers"


@dataclass(frozen=True)
class Engine:
    """podman with this project's storage (the one `make images` fills) and the flags this sandbox needs."""

    root: Path
    binary: str = "podman"

    @classmethod
    def default(cls) -> Engine:
        return cls(engine_dir())

    def available(self) -> bool:
        return shutil.which(self.binary) is not None and shutil.which("runc") is not None

    def env(self) -> dict[str, str]:
        conf = self.root / "containers.conf"
        if not conf.exists():
            conf.parent.mkdir(parents=True, exist_ok=True)
            # The default rlimits cannot be raised inside this kind of sandbox; keep the host's.
            conf.write_text("[containers]\ndefault_ulimits = []\n")
        return {**os.environ, "CONTAINERS_CONF": str(conf)}

    def base(self) -> list[str]:
        return [
            self.binary, "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
            "--storage-driver", "overlay", "--runtime", "runc", "--cgroup-manager", "cgroupfs",
        ]  # fmt: skip

    def call(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base(), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def image_id(self, image: str) -> str | None:
        """The image's ID when it is in local storage (nothing is pulled), else None."""
        done = self.call("image", "inspect", "--format", "{{.Id}}", image)
        return done.stdout.strip() or None if done.returncode == 0 else None

    def image_config(self, image: str) -> Obj:
        done = self.call("image", "inspect", image)
        if done.returncode != 0:
            raise EngineError(done.stderr.strip() or f"image {image} not found")
        data = json.loads(done.stdout)
        return dict(data[0]) if data else {}

    def inspect(self, name: str) -> Obj | None:
        """`podman container inspect` of a container: its config, host config and state; None when gone."""
        done = self.call("container", "inspect", name)
        if done.returncode != 0:
            return None
        data = json.loads(done.stdout)
        return dict(data[0]) if data else None

    def container_state(self, name: str) -> Obj | None:
        """`podman inspect`'s State of a container (ExitCode, OOMKilled, ...), None when it is gone."""
        done = self.call("container", "inspect", "--format", "{{json .State}}", name)
        if done.returncode != 0:
            return None
        return dict(json.loads(done.stdout))

    def container_id(self, name: str) -> str | None:
        done = self.call("container", "inspect", "--format", "{{.Id}}", name)
        return done.stdout.strip() or None if done.returncode == 0 else None

    def remove_labelled(self, label: str) -> int:
        """Remove every container carrying `label` (key=value): leftovers of a node that stopped uncleanly."""
        done = self.call("ps", "--all", "--quiet", "--filter", f"label={label}")
        ids = done.stdout.split() if done.returncode == 0 else []
        if ids:
            self.call("rm", "--force", "--time", "0", *ids, timeout=120)
        return len(ids)

    def kill(self, name: str, signal: str = "TERM") -> None:
        self.call("kill", "--signal", signal, name, timeout=30)

    def remove(self, name: str) -> None:
        self.call("rm", "--force", "--time", "0", name, timeout=60)


def security_context(pod: Obj, container: Obj) -> Obj:
    """The effective securityContext: the container's fields over the Pod's (runAsUser, runAsGroup, ...)."""
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = {k: pod_sc[k] for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile") if k in pod_sc}
    sc.update(container.get("securityContext") or {})
    return sc


def user_flags(pod: Obj, sc: Obj) -> list[str]:
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    out: list[str] = []
    if sc.get("runAsUser") is not None:
        user = str(int(sc["runAsUser"]))
        if sc.get("runAsGroup") is not None:
            user += f":{int(sc['runAsGroup'])}"
        out += ["--user", user]
    elif sc.get("runAsGroup") is not None:
        raise ValueError("runAsGroup without runAsUser is not supported by the local node")
    groups = [*([pod_sc["fsGroup"]] if pod_sc.get("fsGroup") is not None else []),
              *(pod_sc.get("supplementalGroups") or [])]  # fmt: skip
    for g in groups:
        out += ["--group-add", str(int(g))]
    return out


def capability_flags(sc: Obj) -> list[str]:
    caps = sc.get("capabilities") or {}
    out: list[str] = []
    for cap in caps.get("drop") or []:
        out += ["--cap-drop", str(cap).upper()]
    for cap in caps.get("add") or []:
        out += ["--cap-add", str(cap).upper()]
    if sc.get("privileged"):
        out.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        out += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        # A kubelet mounts nothing writable on a read-only root that the Pod did not ask for: no /tmp tmpfs.
        out += ["--read-only", "--read-only-tmpfs=false"]
    return out


def limit_flags(container: Obj) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    out: list[str] = []
    if limits.get("memory") is not None:
        out += ["--memory", str(int(quantity(limits["memory"])))]
    if limits.get("cpu") is not None:
        out += ["--cpus", f"{max(0.01, quantity(limits['cpu'])):g}"]
    if limits.get("ephemeral-storage") is not None:
        # Enforced by the node's eviction manager on a real node; here only recorded.
        pass
    return out


def kubelet_env(declared: Mapping[str, str], place: Placement) -> dict[str, str]:
    """What a kubelet adds to a container's own variables (the image supplies PATH, HOME and the rest).

    The API server is the host's loopback address, reached through the shared network namespace; a
    wildcard address in a value becomes the Pod's own, as in process mode."""
    env = {
        "HOSTNAME": place.name,
        "KUBERNETES_SERVICE_HOST": place.api_host,
        "KUBERNETES_SERVICE_PORT": str(place.api_port),
        "KUBERNETES_PORT": f"tcp://{place.api_host}:{place.api_port}",
    }
    for key, value in declared.items():
        env[key] = place.ip if value in WILDCARDS else value
    return env


def run_argv(
    engine: Engine,
    pod: Obj,
    container: Obj,
    *,
    name: str,
    env: Mapping[str, str],
    mounts: Sequence[Mount],
    read_only: Sequence[str],
    ip: str,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """`podman run` for one container of a Pod: foreground, so its output goes to the container's log."""
    sc = security_context(pod, container)
    meta = pod.get("metadata") or {}
    argv = [
        *engine.base(), "run", "--name", name, "--pull", "never", "--network", "host",
        "--hostname", str(meta.get("name") or name)[:63], "--ulimit", "host", "--init=false",
        "--log-driver", "none", "--sig-proxy=false",
        "--label", f"io.kubernetes.pod.uid={meta.get('uid', '')}",
        "--label", f"io.kubernetes.pod.name={meta.get('name', '')}",
        "--label", f"io.kubernetes.pod.namespace={meta.get('namespace', '')}",
        "--label", f"io.kubernetes.container.name={container.get('name', '')}",
    ]  # fmt: skip
    for key, value in (labels or {}).items():
        argv += ["--label", f"{key}={value}"]
    argv += user_flags(pod, sc)
    argv += capability_flags(sc)
    argv += limit_flags(container)
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    if grace is not None:
        argv += ["--stop-timeout", str(math.ceil(float(grace)))]
    ro = set(read_only)
    for m in mounts:
        argv += ["--volume", f"{m.host_path}:{m.container_path}" + (":ro" if m.container_path in ro else "")]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    if container.get("workingDir"):
        argv += ["--workdir", str(container["workingDir"])]
    command = [expand(str(x), env) for x in container.get("command") or []]
    args = [expand(str(x), env) for x in container.get("args") or []]
    # A wildcard listen address becomes the Pod's own, as in process mode (all Pods share the host network).
    both = rewrite_listen_host([*command, *args], ip)
    command, args = both[: len(command)], both[len(command) :]
    if command:
        # As a kubelet: `command` replaces the image's ENTRYPOINT and drops its CMD; `args` replace CMD.
        argv += ["--entrypoint", json.dumps(command)]
    argv.append(str(container.get("image") or ""))
    return argv + args
