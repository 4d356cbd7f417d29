"""LoRAAdapter: the spec's own rules, the service's verdict (validation.attach.decide, table-tested), and
`tuneops validate` predicting it from the files it is given."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tuneops.api import SpecError, parse_spec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.validation.attach import decide, targets

SVC_NS = "ml"


def _service(lora: dict[str, Any] | None = None, **spec: Any) -> InferenceServiceSpec:
    body = {"model": {"uri": "pvc://models/base"}, "lora": lora if lora is not None else {}, **spec}
    parsed = parse_spec("InferenceService", {"metadata": {"name": "shared"}, "spec": body})
    assert isinstance(parsed, InferenceServiceSpec)
    return parsed


def _adapter(name: str, ns: str, created: str = "2026-01-01T00:00:00Z", **spec: Any) -> dict[str, Any]:
    body = {"serviceRef": {"name": "shared", "namespace": SVC_NS}, "uri": f"hf://acme/{name}@v1", **spec}
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": body}


LABELS = {"nlp": {"team": "nlp"}, "vision": {"team": "vision"}, SVC_NS: {}}


def _verdicts(
    spec: InferenceServiceSpec, *adapters: dict[str, Any], taken: tuple[str, ...] = ("base",)
) -> dict[str, Any]:
    out = decide(SVC_NS, spec, list(adapters), LABELS.get, taken)
    return {v.key: (v.accepted, v.reason, v.message) for v in out}


SELECTOR = {"allowedAdapters": {"namespaces": {"from": "Selector", "selector": {"team": "nlp"}}}}


@pytest.mark.parametrize(
    ("lora", "namespace", "accepted", "needle"),
    [
        ({}, SVC_NS, False, "allowedAdapters is not set"),
        ({"allowedAdapters": {}}, SVC_NS, True, ""),
        ({"allowedAdapters": {}}, "nlp", False, "own namespace 'ml' only"),
        ({"allowedAdapters": {"namespaces": {"from": "All"}}}, "vision", True, ""),
        (SELECTOR, "nlp", True, ""),
        (SELECTOR, "vision", False, "does not carry the labels the service allows (team=nlp)"),
        (SELECTOR, "unknown", False, "cannot be read"),
        ({**SELECTOR, "dynamic": False}, "nlp", False, "lora.dynamic true"),
    ],
)
def test_the_service_decides_who_attaches(
    lora: dict[str, Any], namespace: str, accepted: bool, needle: str
) -> None:
    (verdict,) = _verdicts(_service(lora), _adapter("sql", namespace)).values()
    assert verdict[0] is accepted and needle in verdict[2], verdict
    if not accepted:
        assert verdict[1] == "NotAllowed"


def test_names_are_first_come_first_served_and_the_services_own_always_win() -> None:
    spec = _service({"allowedAdapters": {"namespaces": {"from": "All"}}})
    got = _verdicts(
        spec,
        _adapter("sql", "vision", created="2026-01-02T00:00:00Z"),
        _adapter("sql", "nlp", created="2026-01-01T00:00:00Z"),
        _adapter("own", "nlp"),
        _adapter("renamed", "vision", servedName="own-v2"),
        taken=("base", "own"),
    )
    assert got["nlp/sql"][0] is True
    assert got["vision/sql"][:2] == (False, "NameConflict") and "servedName" in got["vision/sql"][2]
    assert got["nlp/own"][:2] == (False, "NameConflict")
    assert got["vision/renamed"][0] is True


def test_a_pod_cannot_read_a_secret_of_another_namespace() -> None:
    spec = _service({"allowedAdapters": {"namespaces": {"from": "All"}}})
    secret = {"tokenSecretRef": {"name": "hub", "key": "token"}}
    got = _verdicts(spec, _adapter("a", "nlp", **secret), _adapter("b", SVC_NS, **secret))
    assert got["nlp/a"][:2] == (False, "NotAllowed") and "cannot read it" in got["nlp/a"][2]
    assert got[f"{SVC_NS}/b"][0] is True


def test_a_malformed_adapter_is_refused_with_its_fields_not_skipped() -> None:
    spec = _service({"allowedAdapters": {"namespaces": {"from": "All"}}})
    broken = _adapter("x", "nlp", uri="pvc://claim/a")
    assert targets(broken, SVC_NS, "shared")
    (verdict,) = _verdicts(spec, broken).values()
    assert verdict[:2] == (False, "InvalidSpec") and "spec.uri" in verdict[2]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"uri": "pvc://claim/a"}, "a new volume"),
        ({"uri": "file:///etc"}, "a new volume"),
        ({"uri": "hf://acme/a", "digest": "sha256:" + "a" * 64}, "digest is checked by the adapter loader"),
        ({"uri": "s3://b/a"}, None),
        ({"uri": "hf://acme/a@v2", "digest": "sha256:" + "a" * 64, "servedName": "team-a/sql"}, None),
    ],
)
def test_the_adapters_own_rules(spec: dict[str, Any], needle: str | None) -> None:
    obj = {"metadata": {"name": "a"}, "spec": {"serviceRef": {"name": "s"}, **spec}}
    if needle is None:
        parse_spec("LoRAAdapter", obj)
        return
    with pytest.raises(SpecError, match=needle):
        parse_spec("LoRAAdapter", obj)


def test_validate_predicts_the_services_verdict_from_the_given_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneops.cli import main

    head = {"apiVersion": "tuneops.io/v1alpha1"}
    service = {**head, "kind": "InferenceService", "metadata": {"name": "shared", "namespace": SVC_NS},
               "spec": {"model": {"uri": "pvc://models/base"}, "lora": {"allowedAdapters": {}}}}  # fmt: skip

    def adapter(name: str, ns: str, **spec: Any) -> dict[str, Any]:
        return {**head, "kind": "LoRAAdapter", "metadata": {"name": name, "namespace": ns},
                "spec": {"serviceRef": {"name": "shared", "namespace": SVC_NS}, "uri": "s3://b/a", **spec}}  # fmt: skip

    docs = [
        service,
        adapter("ok", SVC_NS),
        adapter("elsewhere", "nlp"),
        adapter("twin", SVC_NS, servedName="ok"),
    ]
    path = tmp_path / "all.yaml"
    path.write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    assert main(["validate", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "LoRAAdapter 'elsewhere'" in err and "own namespace 'ml' only" in err, err
    assert "LoRAAdapter 'twin'" in err and "already served" in err, err
    assert "LoRAAdapter 'ok'" not in err, err
