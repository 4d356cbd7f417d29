"""Issue 24 points 6 and 9: every shipped example passes `tuneops validate` with the default config (so
`tuneops render -f examples/` prints them), validate warns about files with nothing to check, says what only the
cluster can check, and `validate --help`/`render --help` describe the command with examples."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneops.cli import build_parser, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def _default_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("TUNEOPS_CONFIG", "TUNEOPS_ARTIFACT_ROOT"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_passes_validate_with_the_default_config(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", "-f", str(EXAMPLES / name)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "ok:" in out and "error" not in out


def test_render_of_the_examples_folder_prints_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(EXAMPLES)]) == 0, capsys.readouterr().err
    manifests = [m for m in yaml.safe_load_all(capsys.readouterr().out) if m]
    deployments = {m["metadata"]["name"] for m in manifests if m["kind"] == "Deployment"}
    assert "llama-70b" in deployments and len(deployments) >= 6


def test_a_file_with_nothing_to_check_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "deployment.yaml"
    other.write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n")
    assert main(["validate", "-f", str(other)]) == 1
    err = capsys.readouterr().err
    assert f"warning: {other}: no FineTunedModel, QuantizationJob or InferenceService" in err
    assert "Deployment" in err and "nothing to check" in err
    # Beside a file that has some: a warning for the empty one, and the others are checked.
    assert main(["validate", "-f", str(other), "-f", str(EXAMPLES / "quickstart.yaml")]) == 0
    captured = capsys.readouterr()
    assert f"warning: {other}" in captured.err and "ok:" in captured.out
    assert main(["render", "-f", str(other)]) == 1
    assert "nothing to render" in capsys.readouterr().err


def test_validate_names_the_checks_that_need_the_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    svc = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "svc"},
        "spec": {
            "model": {"uri": "pvc://models/base"},
            "resources": {"gpus": 1},
            "apiKeySecretRef": {"name": "api-key", "key": "key"},
            "lora": {"maxLoraRank": 8, "adapters": [{"name": "a", "uri": "pvc://adapters/a"}]},
        },
    }
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(svc))
    assert main(["validate", "-f", str(path)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "not checked (needs the cluster)" in line]
    text = "\n".join(lines)
    assert "spec.model.uri: claim 'models' exists and holds /base" in text
    assert "spec.apiKeySecretRef: Secret 'api-key' exists with key 'key'" in text
    assert "spec.lora.adapters[0].uri: adapter 'a': rank vs maxLoraRank" in text
    assert all(line.startswith(f"note: {path}#1: InferenceService 'svc': ") for line in lines)
    assert captured.out == f"ok: {path}#1: InferenceService svc\n"


@pytest.mark.parametrize("command", ["validate", "render"])
def test_help_has_a_description_and_examples(command: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    text = sub.choices[command].format_help()  # type: ignore[attr-defined]
    assert "examples:" in text and f"tuneops {command} -f examples/" in text
    assert len(text.split("options:")[0]) > 400, "a description, not only the usage line"
