"""A Pod's volumes on the local node: claims, host paths and emptyDirs as folders, Secrets and ConfigMaps as files."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops.kube.client import CONFIGMAP, SECRET, ApiError, Kube
from tuneops.local.podenv import HOST_IP, ConfigError
from tuneops.local.translate import field_value

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where the ServiceAccount admission plugin mounts the API token volume (kube-api-access-*)."""
API_ACCESS_VOLUME = "kube-api-access"
DEFAULT_TOKEN_SECONDS = 3607

Obj = dict[str, Any]


def config_data(api: Kube, namespace: str, kind: str, name: str, optional: bool) -> dict[str, bytes]:
    """A Secret's or ConfigMap's data (`kind` "secrets" or "configmaps"), decoded; {} when optional and absent."""
    obj = api.get(SECRET if kind == "secrets" else CONFIGMAP, namespace, name)
    if obj is None:
        if optional:
            return {}
        raise ConfigError(f'{kind[:-1]} "{name}" not found')
    out: dict[str, bytes] = {}
    for k, v in (obj.get("data") or {}).items():
        out[str(k)] = base64.b64decode(v) if kind == "secrets" else str(v).encode()
    for k, v in (obj.get("binaryData") or {}).items():
        out[str(k)] = base64.b64decode(v)
    return out


def projection(vol: Obj, data: dict[str, bytes]) -> dict[str, tuple[bytes, int]]:
    """The files (relative path -> content, mode) a configMap or secret volume shows."""
    src = vol.get("configMap") or vol.get("secret") or {}
    mode = int(src.get("defaultMode") or 0o644)
    if not src.get("items"):
        return {k: (v, mode) for k, v in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in src["items"]:
        key = str(item["key"])
        if key not in data:
            if src.get("optional"):
                continue
            what = (
                "configmap references non-existent config key"
                if "configMap" in vol
                else ("references non-existent secret key")
            )
            raise ConfigError(f"{what}: {key}")
        files[str(item["path"])] = (data[key], int(item.get("mode") or mode))
    return files


def write_files(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Make `target` hold exactly `files`, each replaced atomically."""
    target.mkdir(parents=True, exist_ok=True)
    for rel, (content, fmode) in files.items():
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(content)
        tmp.chmod(fmode & 0o777 | 0o600)
        tmp.replace(path)
    wanted = {str(target / rel) for rel in files}
    for existing in target.rglob("*"):
        if existing.is_file() and str(existing) not in wanted:
            existing.unlink()


@dataclass
class Volumes:
    """The host folder of each of a Pod's volumes; Secret and ConfigMap files are rewritten when they change."""

    api: Kube
    namespace: str
    claims: Path
    """Where the node keeps PersistentVolumeClaims (one folder per claim)."""
    local: Path
    """The Pod's own volume folders (projected files)."""
    scratch: Path
    memory: Path
    paths: dict[str, Path] = field(default_factory=dict)
    api_access: bool = False
    """Mount the ServiceAccount's API token, CA and namespace at SA_MOUNT unless the Pod opts out, as the
    ServiceAccount admission plugin and the kubelet do together (container mode)."""
    fs_group: int | None = None
    """Container mode: claims and emptyDirs are made writable by the Pod's fsGroup, as a kubelet does."""
    _hashes: dict[str, str] = field(default_factory=dict)
    _tokens: dict[str, tuple[str, float]] = field(default_factory=dict)

    def config(self, kind: str, name: str, optional: bool) -> dict[str, bytes]:
        return config_data(self.api, self.namespace, kind, name, optional)

    def sync(self, pod: Obj) -> None:
        """Create every volume's host folder and (re)write projected files; ConfigError lists what failed."""
        errors = []
        for vol in (pod.get("spec") or {}).get("volumes") or []:
            name = str(vol["name"])
            if "persistentVolumeClaim" in vol:
                path = self.claims / str(vol["persistentVolumeClaim"]["claimName"])
            elif "hostPath" in vol:
                path = Path(str(vol["hostPath"]["path"]))
            elif "emptyDir" in vol:
                medium = (vol["emptyDir"] or {}).get("medium")
                path = (self.memory if medium == "Memory" else self.scratch) / name
            elif "configMap" in vol or "secret" in vol or "projected" in vol:
                path = self.local / name
                try:
                    if "projected" in vol:
                        self._write(name, path, self._projected(pod, vol["projected"] or {}))
                    else:
                        self._project(vol, path)
                except ConfigError as err:
                    errors.append(f'MountVolume.SetUp failed for volume "{name}" : {err}')
            else:
                errors.append(f"volume {name!r}: this volume type is not supported by the local node")
                continue
            path.mkdir(parents=True, exist_ok=True)
            if "emptyDir" in vol:
                # A kubelet creates emptyDirs world-writable: any user the container runs as may write.
                path.chmod(0o777)
            elif "persistentVolumeClaim" in vol and self.fs_group is not None:
                own_by_group(path, self.fs_group)
            self.paths[name] = path
        if self.api_access and _automounts(pod):
            path = self.local / API_ACCESS_VOLUME
            try:
                self._write(API_ACCESS_VOLUME, path, self._projected(pod, API_ACCESS_PROJECTION))
                self.paths[API_ACCESS_VOLUME] = path
            except ConfigError as err:
                errors.append(f'MountVolume.SetUp failed for volume "{API_ACCESS_VOLUME}" : {err}')
        if errors:
            raise ConfigError("; ".join(errors))

    def _project(self, vol: Obj, target: Path) -> None:
        if "configMap" in vol:
            src = vol["configMap"]
            data = self.config("configmaps", str(src.get("name")), bool(src.get("optional")))
        else:
            src = vol["secret"]
            data = self.config("secrets", str(src.get("secretName")), bool(src.get("optional")))
        files = projection(vol, data)
        digest = json.dumps({k: [base64.b64encode(v).decode(), m] for k, (v, m) in sorted(files.items())})
        if self._hashes.get(str(vol["name"])) != digest:
            write_files(target, files)
            self._hashes[str(vol["name"])] = digest

    def over_limit(self, pod: Obj) -> str | None:
        """The kubelet's eviction message for the first emptyDir that holds more than its sizeLimit, else None."""
        from tuneops.local.translate import quantity

        for vol in (pod.get("spec") or {}).get("volumes") or []:
            source = vol.get("emptyDir")
            limit = (source or {}).get("sizeLimit")
            path = self.paths.get(str(vol.get("name")))
            if limit is None or path is None:
                continue
            if disk_usage(path) > quantity(limit):
                return f'Usage of EmptyDir volume "{vol["name"]}" exceeds the limit "{limit}". '
        return None

    def _write(self, name: str, target: Path, files: dict[str, tuple[bytes, int]]) -> None:
        digest = json.dumps({k: [base64.b64encode(v).decode(), m] for k, (v, m) in sorted(files.items())})
        if self._hashes.get(name) != digest:
            write_files(target, files)
            self._hashes[name] = digest

    def _projected(self, pod: Obj, projected: Obj) -> dict[str, tuple[bytes, int]]:
        """The files of a projected volume: ServiceAccount token, ConfigMap, Secret and downward API sources."""
        mode = int(projected.get("defaultMode") or 0o644)
        files: dict[str, tuple[bytes, int]] = {}
        for source in projected.get("sources") or []:
            if "serviceAccountToken" in source:
                src = source["serviceAccountToken"] or {}
                token = self._token(pod, src)
                files[str(src.get("path") or "token")] = (token.encode(), mode)
            elif "configMap" in source or "secret" in source:
                key = "configMap" if "configMap" in source else "secret"
                src = source[key] or {}
                kind = "configmaps" if key == "configMap" else "secrets"
                data = self.config(kind, str(src.get("name")), bool(src.get("optional")))
                vol = {key: {**src, "defaultMode": mode, "secretName": src.get("name")}}
                files.update(projection(vol, data))
            elif "downwardAPI" in source:
                for item in (source["downwardAPI"] or {}).get("items") or []:
                    ref = item.get("fieldRef") or {}
                    if not ref:
                        raise ConfigError(
                            f"downwardAPI item {item.get('path')}: only fieldRef is supported here"
                        )
                    value = field_value(pod, str(ref.get("fieldPath")), "", HOST_IP)
                    files[str(item["path"])] = (value.encode(), int(item.get("mode") or mode))
            else:
                raise ConfigError(f"projected source {sorted(source)} is not supported by the local node")
        return files

    def _token(self, pod: Obj, src: Obj) -> str:
        """A bound ServiceAccount token, asked for again after 80% of its life (as a kubelet refreshes)."""
        spec = pod.get("spec") or {}
        sa = str(spec.get("serviceAccountName") or "default")
        audience = str(src.get("audience") or "")
        seconds = int(src.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
        key = f"{sa}|{audience}|{seconds}"
        cached = self._tokens.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        # Bound to the Pod when it names its ServiceAccount; a Pod that names none (no admission plugin filled
        # in `default` here) gets an unbound token of `default`, which the API server would refuse to bind.
        bound = pod if spec.get("serviceAccountName") else None
        try:
            out = self.api.request_token(self.namespace, sa, [audience] if audience else [], seconds, bound)
        except ApiError as err:
            raise ConfigError(f"failed to fetch token: {err}") from None
        token = str((out.get("status") or {}).get("token") or "")
        if not token:
            raise ConfigError("failed to fetch token: the TokenRequest returned none")
        self._tokens[key] = (token, time.monotonic() + 0.8 * seconds)
        return token


API_ACCESS_PROJECTION: Obj = {
    "defaultMode": 0o644,
    "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": DEFAULT_TOKEN_SECONDS}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
    ],
}


def _automounts(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    if spec.get("automountServiceAccountToken") is False:
        return False
    # A Pod that mounts something at the token's place itself gets no second volume there.
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for vm in c.get("volumeMounts") or []:
            if str(vm.get("mountPath", "")).rstrip("/") == SA_MOUNT:
                return False
    return True


def disk_usage(path: Path) -> int:
    """Bytes a folder takes on disk (allocated blocks, as `du` counts them)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(folder, f)).st_blocks * 512
            except OSError:
                continue
    return total


def own_by_group(path: Path, gid: int) -> None:
    """fsGroup on a volume: group-owned by `gid`, group-writable, new files inheriting the group (setgid
    folders). Skipped when the root already has that group (fsGroupChangePolicy OnRootMismatch)."""
    if path.stat().st_gid == gid:
        return
    for folder, _dirs, files in os.walk(path):
        os.chown(folder, -1, gid)
        os.chmod(folder, os.stat(folder).st_mode | 0o2070)
        for f in files:
            fp = os.path.join(folder, f)
            if not os.path.islink(fp):
                os.chown(fp, -1, gid)
                os.chmod(fp, os.stat(fp).st_mode | 0o060)
