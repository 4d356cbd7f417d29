"""Artifact URIs inside a Pod: where a pvc:// or file:// URI is found, and the PVC volumes that put it there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneops.config import OperatorConfig
from tuneops.render.names import bounded_name
from tuneops.render.types import RenderError
from tuneops.storage.uri import ArtifactURI, parse_uri


def parse(uri: str) -> ArtifactURI:
    """The parts of a URI the API admitted (renderers never refuse a URI; the workers do)."""
    return parse_uri(uri, strict=False)


def claim_root(claim: str, config: OperatorConfig) -> str:
    return f"{config.pvc_mount_root.rstrip('/')}/{claim}"


def pod_path(uri: str, config: OperatorConfig) -> str:
    """Where a pvc:// or file:// URI is found inside a Pod (other schemes are not files)."""
    u = parse(uri)
    if u.scheme == "pvc":
        root = claim_root(u.claim, config)
        return f"{root}/{u.subpath}" if u.subpath else root
    if u.scheme == "file":
        return "/" + u.file.lstrip("/")
    raise RenderError(f"{uri!r} is not a file path inside the Pod")


def pvc_volume_name(claim: str) -> str:
    """A Pod's volume name for a claim: `pvc-<claim>` (one-to-one in the claim through `bounded_name`, and
    apart from the Pod's other volumes, none of which starts with `pvc-`)."""
    return bounded_name("pvc", claim)


@dataclass
class Mounts:
    """PVC volumes for a set of URIs: each claim mounted once at <pvc_mount_root>/<claim>, read-only unless
    some URI on it is written."""

    config: OperatorConfig
    claims: dict[str, bool] = field(default_factory=dict)

    def add(self, uri: str | None, *, write: bool = False) -> None:
        u = parse(uri) if uri is not None else None
        if u is None or u.scheme != "pvc":
            return
        self.claims[u.claim] = self.claims.get(u.claim, False) or write

    def volumes(self) -> list[dict[str, Any]]:
        return [
            {
                "name": pvc_volume_name(claim),
                "persistentVolumeClaim": {"claimName": claim, "readOnly": not write},
            }
            for claim, write in sorted(self.claims.items())
        ]

    def volume_mounts(self) -> list[dict[str, Any]]:
        return [
            {
                "mountPath": claim_root(claim, self.config),
                "name": pvc_volume_name(claim),
                "readOnly": not write,
            }
            for claim, write in sorted(self.claims.items())
        ]
