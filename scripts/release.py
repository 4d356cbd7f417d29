#!/usr/bin/env python3
"""The release's steps, shared by .github/workflows/release.yml and a local dry run (`make release-dry-run`).

  plan     the version and the image build matrix, as GitHub Actions outputs (version=..., images=[...])
  check    every place that names the version agrees with pyproject.toml (the one place it is set); with
           --tag vX.Y.Z, the tag does too
  chart    `helm lint` and `helm package` of charts/tuneops into dist/ (an OCI artifact once pushed)
  crds     the CRDs as one file for the release page: dist/tuneops-crds-<version>.yaml
  dry-run  check, chart and crds, and the image builds the workflow would run, printed

The version lives in pyproject.toml. Chart.yaml's version and appVersion, tuneops.__version__, and the image
tags of the operator config and the chart's values must equal it (`check` fails otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tuneops"
DIST = ROOT / "dist"

# Image name -> (Containerfile, platforms, build arguments). The worker is built with CUDA torch for release
# (its CUDA libraries come as pip wheels, so the Python base serves); `make images` builds it with CPU torch.
IMAGES: dict[str, tuple[str, str, dict[str, str]]] = {
    "operator": ("images/operator/Dockerfile", "linux/amd64,linux/arm64", {}),
    "worker": ("images/worker/Dockerfile", "linux/amd64,linux/arm64", {"TORCH": "cuda"}),
    "gguf": ("images/gguf/Dockerfile", "linux/amd64,linux/arm64", {}),
    "vllm-cpu": ("images/vllm-cpu/Dockerfile", "linux/amd64", {}),
}


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def where_versions_are() -> dict[str, str]:
    """Every other place that states the version, and what it says."""
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    init = (ROOT / "operator" / "tuneops" / "__init__.py").read_text()
    config = (ROOT / "operator" / "tuneops" / "config.py").read_text()
    found = {
        "charts/tuneops/Chart.yaml version": str(chart["version"]),
        "charts/tuneops/Chart.yaml appVersion": str(chart["appVersion"]),
        "tuneops.__version__": re.search(r'__version__ = "([^"]+)"', init).group(1),  # type: ignore[union-attr]
    }
    for name in ("worker", "gguf"):
        m = re.search(rf'{name}: str = "ghcr\.io/tuneops/{name}:([^"]+)"', config)
        found[f"config.Images.{name}"] = m.group(1) if m else "(missing)"
        found[f"values config.images.{name}"] = str(values["config"]["images"][name]).rsplit(":", 1)[1]
    return found


def check(tag: str | None) -> None:
    want = version()
    wrong = {where: got for where, got in where_versions_are().items() if got != want}
    if tag is not None and tag.removeprefix("v") != want:
        wrong["the tag"] = tag
    if wrong:
        lines = "\n".join(f"  {where}: {got}" for where, got in wrong.items())
        raise SystemExit(f"release: version {want} (pyproject.toml) disagrees with:\n{lines}")
    print(f"release: version {want} everywhere")


def plan() -> None:
    matrix = [
        {
            "name": name,
            "file": file,
            "platforms": platforms,
            "build_args": "\n".join(f"{k}={v}" for k, v in args.items()),
        }
        for name, (file, platforms, args) in IMAGES.items()
    ]
    print(f"version={version()}")
    print(f"images={json.dumps(matrix, separators=(',', ':'))}")


def helm_binary() -> str:
    if os.environ.get("HELM"):
        return os.environ["HELM"]
    sys.path.insert(0, str(ROOT / "operator"))
    from tuneops import toolpaths

    cached = toolpaths.helm_binary()
    return str(cached) if cached.is_file() else "helm"


def chart() -> Path:
    DIST.mkdir(exist_ok=True)
    helm = helm_binary()
    v = version()
    subprocess.run([helm, "lint", str(CHART)], check=True)
    subprocess.run(
        [helm, "package", str(CHART), "--version", v, "--app-version", v, "--destination", str(DIST)], check=True
    )
    out = DIST / f"tuneops-{v}.tgz"
    if not out.is_file():
        raise SystemExit(f"release: helm package did not write {out}")
    print(f"release: chart {out}")
    return out


def crds() -> Path:
    DIST.mkdir(exist_ok=True)
    docs = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    kinds = sorted(d["spec"]["names"]["kind"] for d in docs)
    if kinds != ["FineTunedModel", "InferenceService", "LoRAAdapter", "QuantizationJob"]:
        raise SystemExit(f"release: crds/ holds {kinds}")
    out = DIST / f"tuneops-crds-{version()}.yaml"
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    print(f"release: CRDs {out} ({', '.join(kinds)})")
    return out


def dry_run(tag: str | None) -> None:
    check(tag)
    chart()
    crds()
    v = version()
    for name, (file, platforms, args) in IMAGES.items():
        if not (ROOT / file).is_file():
            raise SystemExit(f"release: {file} is missing")
        build_args = " ".join(f"--build-arg {k}={val}" for k, val in args.items())
        print(
            f"release: would build ghcr.io/tuneops/{name}:{v} from {file} for {platforms} {build_args}".rstrip()
            + " (SBOM, provenance, keyless signature)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["plan", "check", "chart", "crds", "dry-run"])
    parser.add_argument("--tag", default=None, help="the release tag (vX.Y.Z) to check against")
    args = parser.parse_args()
    if args.step == "plan":
        plan()
    elif args.step == "check":
        check(args.tag)
    elif args.step == "chart":
        chart()
    elif args.step == "crds":
        crds()
    else:
        dry_run(args.tag)


if __name__ == "__main__":
    main()
