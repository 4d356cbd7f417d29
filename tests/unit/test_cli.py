"""The `tuneops` command as a reviewer or a GitOps pipeline uses it: render, validate, crds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def tuneops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tuneops.cli", *args], capture_output=True, text=True, check=False
    )


def test_render_prints_every_manifest_of_a_file() -> None:
    proc = tuneops("render", "-f", str(ROOT / "examples" / "multi-lora.yaml"), "-n", "ml")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted({d["kind"] for d in docs})
    assert {"Job", "Deployment", "Service", "ConfigMap"} <= set(kinds), kinds
    assert all(d["metadata"]["namespace"] == "ml" for d in docs)
    assert all(d["metadata"]["ownerReferences"][0]["controller"] for d in docs)


def test_render_refuses_an_invalid_resource_naming_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: tuneops.io/v1alpha1\nkind: QuantizationJob\nmetadata: {name: q}\n"
        "spec: {source: {uri: 'pvc://m/a'}, method: gguf, gguf: {quantTypes: [Q4_K_X]}}\n"
    )
    proc = tuneops("render", "-f", str(bad))
    assert proc.returncode == 2
    assert "spec.gguf.quantTypes" in proc.stderr and proc.stdout == ""


def test_crds_without_cel_for_older_servers() -> None:
    full = tuneops("crds", "-o", "-")
    old = tuneops("crds", "--no-cel", "-o", "-")
    assert full.returncode == old.returncode == 0
    assert "x-kubernetes-validations" in full.stdout and "x-kubernetes-validations" not in old.stdout
    assert len(list(yaml.safe_load_all(old.stdout))) == 3
