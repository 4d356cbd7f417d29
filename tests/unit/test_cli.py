"""The `tuneops` command as a reviewer or a GitOps pipeline uses it: render, validate, crds."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneops.cli import main

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
    assert len(list(yaml.safe_load_all(old.stdout))) == 4


# ------------------------------------------------------------------------------ input as kubectl -f reads it


def ftm(name: str = "m", **spec: Any) -> dict[str, Any]:
    body = {"baseModel": {"uri": "hf://org/base"}, "adapter": {"uri": "pvc://adapters/a"}, **spec}
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "FineTunedModel",
        "metadata": {"name": name},
        "spec": body,
    }


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`tuneops *args` in this process: exit code, stdout, stderr (never a traceback)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


COMMANDS = ("validate", "render")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: FineTunedModel\nmetadata: {name: m\n", "bad.yaml:3:1: invalid YAML: expected ',' or '}'"),
        (
            "kind: FineTunedModel\n  metadata: x\n",
            "bad.yaml:2:11: invalid YAML: mapping values are not allowed",
        ),
        ("\tkind: FineTunedModel\n", "bad.yaml:1:1: invalid YAML: found character '\\t'"),
        ("- kind: FineTunedModel\n", "bad.yaml#1: expected a Kubernetes object (a mapping), got list"),
        ("apiVersion: v1\nkind: List\nitems: {a: b}\n", "bad.yaml#1: List.items must be a list"),
        ("", "no objects in bad.yaml"),
    ],
)
def test_unreadable_yaml_is_one_line_naming_file_and_position(
    command: str, text: str, message: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "bad.yaml").write_text(text)
    code, out, err = run(capsys, command, "-f", "bad.yaml")
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err


@pytest.mark.parametrize("command", COMMANDS)
def test_missing_file_and_bad_json(command: str, here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, command, "-f", "nope.yaml")[::2] == (
        2,
        "error: nope.yaml: no such file or directory\n",
    )
    (here / "m.json").write_text('{"kind": "FineTunedModel",\n "metadata": {}\n')
    code, _, err = run(capsys, command, "-f", "m.json")
    assert (code, err) == (2, "error: m.json:3:1: invalid JSON: Expecting ',' delimiter\n")


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreadable_operator_config_is_reported(
    command: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "m.yaml").write_text(yaml.safe_dump(ftm()))
    code, _, err = run(capsys, command, "-f", "m.yaml", "--config", "missing.yaml")
    assert code == 2 and err.startswith("error: operator config missing.yaml: ") and err.count("\n") == 1


def test_references_are_followed_across_the_files_given(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service in one file, the GGUF QuantizationJob it serves in another: refused before any Job runs."""
    qjob = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "QuantizationJob",
        "metadata": {"name": "q"},
        "spec": {"source": {"uri": "hf://org/model"}, "method": "gguf"},
    }
    svc: dict[str, Any] = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "svc"},
        "spec": {"model": {"quantizationJobRef": {"name": "q"}}},
    }
    (here / "q.yaml").write_text(yaml.safe_dump(qjob))
    (here / "svc.yaml").write_text(yaml.safe_dump(svc))
    refusal = (
        "error: svc.yaml#1: InferenceService 'svc':\n"
        "  spec.runtime: vllm does not serve GGUF artifacts here; use runtime: llamacpp\n"
    )
    assert run(capsys, "validate", "-f", "q.yaml", "-f", "svc.yaml") == (
        2,
        "ok: q.yaml#1: QuantizationJob q\n",
        refusal,
    )
    assert run(capsys, "render", "-f", "q.yaml", "-f", "svc.yaml") == (2, "", refusal)
    code, out, err = run(capsys, "validate", "-f", "svc.yaml")
    assert (code, out) == (0, "ok: svc.yaml#1: InferenceService svc\n")
    assert "not checked: QuantizationJob/q (spec.model.quantizationJobRef) not in the given files" in err
    # A namespace given on the command line is where references without one are looked for.
    svc["metadata"]["namespace"] = "ml"
    (here / "svc.yaml").write_text(yaml.safe_dump(svc))
    assert run(capsys, "validate", "-n", "ml", "-f", "q.yaml", "-f", "svc.yaml")[::2] == (2, refusal)


def test_a_folder_is_read_like_kubectl(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "d" / "sub").mkdir(parents=True)
    (here / "d" / "b.yml").write_text(yaml.safe_dump(ftm("b")))
    (here / "d" / "a.yaml").write_text(yaml.safe_dump_all([ftm("a1"), ftm("a2")]))
    (here / "d" / "c.json").write_text(json.dumps(ftm("c")))
    (here / "d" / "README.md").write_text("not a manifest: {")
    (here / "d" / "sub" / "deep.yaml").write_text(yaml.safe_dump(ftm("deep")))
    code, out, _ = run(capsys, "validate", "-f", "d")
    assert code == 0
    assert out.splitlines() == [
        "ok: d/a.yaml#1: FineTunedModel a1",
        "ok: d/a.yaml#2: FineTunedModel a2",
        "ok: d/b.yml#1: FineTunedModel b",
        "ok: d/c.json#1: FineTunedModel c",
    ]
    code, out, _ = run(capsys, "validate", "-R", "-f", "d")
    assert code == 0 and out.splitlines()[-1] == "ok: d/sub/deep.yaml#1: FineTunedModel deep"
    code, out, _ = run(capsys, "render", "-f", "d", "--recursive")
    assert code == 0
    owners = {d["metadata"]["ownerReferences"][0]["name"] for d in yaml.safe_load_all(out) if d}
    assert owners == {"a1", "a2", "b", "c", "deep"}
    (here / "empty").mkdir()
    code, _, err = run(capsys, "validate", "-f", "empty")
    assert code == 2 and err.startswith("error: empty: no .json, .yaml, .yml files in this folder")


def test_stdin(here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(yaml.safe_dump(ftm("s"))))
    assert run(capsys, "validate", "-f", "-")[:2] == (0, "ok: stdin#1: FineTunedModel s\n")


@pytest.mark.parametrize("list_kind", ["List", "FineTunedModelList"])
def test_list_items_are_validated_one_by_one(
    list_kind: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = ftm("bad", merge={"dtype": "float99"})
    doc = {"apiVersion": "v1", "kind": list_kind, "items": [ftm("good"), bad]}
    (here / "list.yaml").write_text(yaml.safe_dump(doc))
    code, out, err = run(capsys, "validate", "-f", "list.yaml")
    assert code == 2
    assert out == "ok: list.yaml#1.items[0]: FineTunedModel good\n"
    assert err.startswith("error: list.yaml#1.items[1]: FineTunedModel 'bad':\n  spec.merge.dtype: ")
    code, out, err = run(capsys, "render", "-f", "list.yaml")
    assert code == 2 and out == "" and "list.yaml#1.items[1]" in err


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (ftm(merg={}), "spec.merg: unknown field 'merg'; did you mean 'merge'?"),
        (
            {
                "apiVersion": "tuneops.io/v1alpha1",
                "kind": "InferenceService",
                "metadata": {"name": "s"},
                "spec": {
                    "model": {"uri": "hf://o/m"},
                    "lora": {"adapters": [{"name": "a", "fineTunedModelRf": {}}]},
                },
            },
            "spec.lora.adapters[0].fineTunedModelRf: unknown field 'fineTunedModelRf'; did you mean 'fineTunedModelRef'?",
        ),
        (
            ftm(baseModel={"uri": "hf://org/base", "revison": "main"}),
            "spec.baseModel.revison: unknown field 'revison'; did you mean 'revision'?",
        ),
        (
            ftm(baseModel={"uri": "meta-llama/Llama-3.1-8B@main"}),
            "spec.baseModel.uri: 'meta-llama/Llama-3.1-8B@main' has no scheme; for a Hugging Face model "
            "write 'hf://meta-llama/Llama-3.1-8B@main'",
        ),
        (
            ftm(adapter={"uri": "/data/adapter"}),
            "spec.adapter.uri: unsupported URI '/data/adapter': use one of hf://, s3://, pvc://, file://",
        ),
        (
            ftm("Llama_V2"),
            "metadata.name: 'Llama_V2' is not a DNS-1123 subdomain: use lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit",
        ),
        (ftm("x" * 254), "metadata.name: 'xxx"),
        ({**ftm(), "metadata": {}}, "metadata.name: is required"),
        (
            {**ftm(), "metadata": {"name": "m", "namespace": "team.a"}},
            "metadata.namespace: 'team.a' is not a DNS-1123 label",
        ),
        (
            {**ftm(), "kind": "FineTuneModel"},
            "unknown kind 'FineTuneModel' in tuneops.io/v1alpha1; did you mean",
        ),
        ({"metadata": {"name": "x"}}, "kind is required"),
    ],
)
def test_refusals_say_what_to_write(
    command: str, doc: dict[str, Any], problem: str, here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "m.yaml").write_text(yaml.safe_dump(doc))
    code, out, err = run(capsys, command, "-f", "m.yaml")
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0].startswith("error: m.yaml#1: ")
    assert any(line.startswith(f"  {problem}") for line in lines[1:]), err


def test_other_kinds_are_left_alone(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_Ours"}}
    (here / "m.yaml").write_text(yaml.safe_dump_all([cm, ftm()]))
    assert run(capsys, "validate", "-f", "m.yaml")[:2] == (0, "ok: m.yaml#2: FineTunedModel m\n")
