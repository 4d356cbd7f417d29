"""Release engineering: the workflow passes actionlint, versions come from one place, and the release's local
steps (chart package, CRD bundle, image matrix) run here as a dry run."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_the_workflows_pass_actionlint() -> None:
    done = _run("scripts/actionlint.sh")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 finding(s)" in done.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("needs.plan.outputs.images", "needs.plan.outputs.imagez"))
    done = _run("scripts/actionlint.sh", str(broken))
    assert done.returncode == 1
    assert 'property "imagez" is not defined' in done.stdout


def test_the_workflow_publishes_what_a_release_needs() -> None:
    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = [s for job in flow["jobs"].values() for s in job["steps"]]
    build = next(s for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action"))
    assert build["with"]["sbom"] is True and build["with"]["provenance"] == "mode=max"
    runs = "\n".join(str(s.get("run", "")) for s in steps)
    assert 'cosign sign --yes "$IMAGE"' in runs and 'cosign sign --yes "$CHART"' in runs
    assert 'helm push "dist/tuneops-${VERSION}.tgz" "oci://${REGISTRY}/charts"' in runs
    assert "dist/tuneops-crds-${VERSION}.yaml" in runs
    assert flow["jobs"]["images"]["permissions"]["id-token"] == "write"  # keyless signing


def test_the_plan_names_every_containerfile_and_the_version_from_pyproject() -> None:
    done = _run(sys.executable, "scripts/release.py", "plan")
    assert done.returncode == 0, done.stderr
    out = dict(line.split("=", 1) for line in done.stdout.splitlines())
    import tomllib

    assert out["version"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    matrix = json.loads(out["images"])
    assert {m["name"] for m in matrix} == {"operator", "worker", "gguf", "vllm-cpu"}
    for m in matrix:
        assert (ROOT / m["file"]).is_file()
        assert "linux/amd64" in m["platforms"]
    assert "linux/arm64" in next(m for m in matrix if m["name"] == "operator")["platforms"]


def test_a_tag_that_disagrees_with_the_version_is_refused() -> None:
    done = _run(sys.executable, "scripts/release.py", "check", "--tag", "v9.9.9")
    assert done.returncode != 0
    assert "the tag: v9.9.9" in done.stderr


def test_dry_run_packages_the_chart_and_bundles_the_crds() -> None:
    done = _run(sys.executable, "scripts/release.py", "dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    version = done.stdout.split("release: version ", 1)[1].split()[0]
    chart = ROOT / "dist" / f"tuneops-{version}.tgz"
    with tarfile.open(chart) as tar:
        meta = yaml.safe_load(tar.extractfile("tuneops/Chart.yaml").read())  # type: ignore[union-attr]
    assert (meta["version"], meta["appVersion"]) == (version, version)
    crds = list(yaml.safe_load_all((ROOT / "dist" / f"tuneops-crds-{version}.yaml").read_text()))
    assert sorted(c["spec"]["names"]["kind"] for c in crds) == [
        "FineTunedModel",
        "InferenceService",
        "LoRAAdapter",
        "QuantizationJob",
    ]
    assert done.stdout.count("would build ghcr.io/tuneops/") == 4
