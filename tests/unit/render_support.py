"""Shared checks for the renderer tests: strict Kubernetes validation, golden files, manifest walking."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.unit import published_schemas
from tuneops import API_VERSION
from tuneops.render import Owner

K8S_VERSION = "1.30.0"
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TUNEOPS_UPDATE_GOLDEN", "") == "1"
UID = "3f1c0d52-6a2b-4c1e-9d7a-0b8e5f4a2c11"


def owner(kind: str, name: str, namespace: str = "team-a", uid: str = UID) -> Owner:
    return Owner(API_VERSION, kind, name, namespace, uid)


def validate(manifest: dict[str, Any]) -> None:
    """Strict schema validation against a fixed Kubernetes version (unknown fields are errors).

    Other projects' kinds (KEDA, Gateway API, its Inference Extension) are checked against their published
    schemas (tests/unit/published_schemas.py). LeaderWorkerSet is a CRD the schemas do not know: its leader
    and worker templates are checked as core PodTemplates, which is where everything the renderer writes into
    it lives.
    """
    if manifest["apiVersion"].split("/")[0] in published_schemas.GROUPS:
        errors = published_schemas.errors([manifest])[0]
        assert not errors, f"{manifest['kind']} {manifest['metadata']['name']}: {errors}"
        return
    if manifest["kind"] == "LeaderWorkerSet":
        lwt = manifest["spec"]["leaderWorkerTemplate"]
        for role in ("leaderTemplate", "workerTemplate"):
            kubernetes_validate.validate(
                {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": role.lower()},
                    "template": lwt[role],
                },
                K8S_VERSION,
                strict=True,
            )
        return
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def check_golden(name: str, manifests: Iterable[dict[str, Any]]) -> None:
    """Compare with tests/unit/golden/<name>.yaml; TUNEOPS_UPDATE_GOLDEN=1 rewrites it."""
    text = yaml.safe_dump_all(list(manifests), sort_keys=True, width=120)
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.write_text(text)
        return
    assert path.exists(), f"{path} is missing; run with TUNEOPS_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), (
        f"{path} differs from the rendered manifests (TUNEOPS_UPDATE_GOLDEN=1 to accept)"
    )


def pod_specs(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = manifest.get("spec", {})
    if "template" in spec:
        yield spec["template"]["spec"]
    lwt = spec.get("leaderWorkerTemplate")
    if lwt:
        yield lwt["leaderTemplate"]["spec"]
        yield lwt["workerTemplate"]["spec"]


def containers(manifest: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for pod in pod_specs(manifest):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


SECRET_ENV = {"HF_TOKEN", "VLLM_API_KEY", "LLAMA_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN"}  # fmt: skip


def assert_no_secrets(manifests: Iterable[dict[str, Any]], secret_values: Iterable[str] = ()) -> None:
    """Secrets reach containers only as env valueFrom secretKeyRef: never as a literal, never in args."""
    values = list(secret_values)
    for m in manifests:
        blob = json.dumps(m)
        for v in values:
            assert v not in blob
        for c in containers(m):
            for e in c.get("env", []):
                # Per-source credentials carry the same names under a TUNEOPS_<ROLE>_ prefix.
                if e["name"] in SECRET_ENV or any(e["name"].endswith("_" + n) for n in SECRET_ENV):
                    assert "value" not in e, e
                    assert "secretKeyRef" in e["valueFrom"], e
            argv = " ".join([*c.get("command", []), *c.get("args", [])])
            for flag in ("--api-key", "--hf-token", "--token"):
                assert flag not in argv.split(), argv


def assert_restricted(manifests: Iterable[dict[str, Any]]) -> None:
    """Every Pod and container meets the restricted Pod Security Standard."""
    for m in manifests:
        for pod in pod_specs(m):
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in containers(m):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
            assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert_bounded_scratch(m)


# Where programs write by default, set to a writable mount by the renderers.
WRITABLE_ENV = ("HOME", "HF_HOME", "TMPDIR", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT", "XDG_CACHE_HOME")


def assert_bounded_scratch(manifest: dict[str, Any]) -> None:
    """Read-only root filesystems; every emptyDir has a sizeLimit, every container requests ephemeral-storage,
    and what a container writes (/tmp, HOME and the caches its env names) is on a writable mount of its own."""
    for pod in pod_specs(manifest):
        empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for v in pod.get("volumes", []):
            if "emptyDir" in v:
                assert v["emptyDir"].get("sizeLimit"), v
        for c in [*pod.get("initContainers", []), *pod["containers"]]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert "ephemeral-storage" in c["resources"]["requests"], c["name"]
            writable = [
                m["mountPath"]
                for m in c.get("volumeMounts", [])
                if m["name"] in empty and not m.get("readOnly")
            ]
            assert "/tmp" in writable, c["name"]
            for e in c.get("env", []):
                if e["name"] in WRITABLE_ENV and "value" in e:
                    path = e["value"]
                    assert any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable), (
                        c["name"],
                        e,
                    )


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
