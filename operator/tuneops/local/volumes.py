"""A Pod's volumes on the local node: claims, host paths and emptyDirs as folders, Secrets and ConfigMaps as files."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops.kube.client import CONFIGMAP, SECRET, Kube
from tuneops.local.podenv import ConfigError

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
    _hashes: dict[str, str] = field(default_factory=dict)

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
            elif "configMap" in vol or "secret" in vol:
                path = self.local / name
                try:
                    self._project(vol, path)
                except ConfigError as err:
                    errors.append(f'MountVolume.SetUp failed for volume "{name}" : {err}')
            else:
                errors.append(f"volume {name!r}: this volume type is not supported by the local node")
                continue
            path.mkdir(parents=True, exist_ok=True)
            self.paths[name] = path
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
