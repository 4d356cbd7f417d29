"""Malformed and hostile specs: parsing accepts or refuses naming the field, and never fails any other way.

What is accepted renders without error (or is reported as a problem before rendering), and everything it
renders is restricted, secret-free and points only at allowed, non-climbing URIs.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.hostile import BAD_SCHEME_URIS, TRAVERSAL_URIS, VALID, mutated_specs, resource, uris
from tests.unit.render_support import assert_no_secrets, assert_restricted
from tuneops.api import SpecError, parse_spec
from tuneops.api.common import MESSAGE_MAX, URI_SCHEMES, check_uri
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.finetunedmodel import render_finetunedmodel
from tuneops.render.plan import Resolver, parse_documents
from tuneops.render.quantizationjob import check_quantizationjob, render_quantizationjob
from tuneops.render.serving import check_inferenceservice, render_inferenceservice
from tuneops.render.types import Manifest

PROBLEM = re.compile(r"^spec(\.|\[|:)")
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(kind: str, spec: Any) -> tuple[Any, list[str]]:
    """(parsed spec, []) or (None, problems). Any exception but SpecError fails the test."""
    try:
        return parse_spec(kind, resource(kind, spec)), []
    except SpecError as err:
        return None, err.problems


def render_checked(kind: str, spec: Any) -> list[Manifest] | None:
    """What the operator would do: check, then render. None when a check refuses the spec (InvalidSpec)."""
    [r] = parse_documents([resource(kind, spec)], namespace="ns")
    resolver = Resolver([r], OperatorConfig())
    config = resolver.config
    if isinstance(r.spec, FineTunedModelSpec):
        return render_finetunedmodel(r.spec, r.owner, config)
    if isinstance(r.spec, QuantizationJobSpec):
        source = resolver.quantization_source(r.spec, r.namespace)
        if check_quantizationjob(r.spec, source):
            return None
        return render_quantizationjob(r.spec, r.owner, config, source=source)
    assert isinstance(r.spec, InferenceServiceSpec)
    model, adapters = resolver.served(r.spec, r.namespace)
    if check_inferenceservice(r.spec, model=model, adapters=adapters):
        return None
    return list(render_inferenceservice(r.spec, r.owner, config, model=model, adapters=adapters).manifests)


def uris_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [
            u for k, v in value.items() for u in ([v] if k == "uri" and isinstance(v, str) else uris_in(v))
        ]
    if isinstance(value, list):
        return [u for v in value for u in uris_in(v)]
    return []


def test_the_valid_seeds_are_valid_and_render() -> None:
    for kind, specs in VALID.items():
        for spec in specs:
            parsed, problems = outcome(kind, spec)
            assert parsed is not None, problems
            assert render_checked(kind, spec), (kind, spec)


@SETTINGS
@given(mutated_specs())
def test_hostile_specs_are_accepted_or_refused_naming_the_field(case: tuple[str, dict[str, Any]]) -> None:
    kind, spec = case
    parsed, problems = outcome(kind, spec)
    if parsed is None:
        assert problems
        for p in problems:
            assert PROBLEM.match(p), p
        # The reconciler puts these into a condition message, which the CRD bounds.
        assert len("; ".join(problems)) <= MESSAGE_MAX
        return
    for uri in uris_in(parsed.wire()):
        scheme, _, rest = uri.partition("://")
        assert scheme in URI_SCHEMES and ".." not in rest.split("/"), uri
    manifests = render_checked(kind, spec)
    if manifests is not None:
        assert_restricted(manifests)
        assert_no_secrets(manifests)


@SETTINGS
@given(
    st.sampled_from(sorted(VALID)), st.none() | st.integers() | st.text(max_size=20) | st.lists(st.integers())
)
def test_a_spec_that_is_not_an_object_is_refused(kind: str, spec: Any) -> None:
    parsed, problems = outcome(kind, spec)
    if spec in (None, "", []):  # YAML's empty spec: the required fields are missing
        assert parsed is None and problems
        return
    assert parsed is None and problems and all(p.startswith("spec") for p in problems), problems


@settings(max_examples=500, deadline=None)
@given(uris())
def test_uris_are_checked_against_the_scheme_allow_list_and_may_not_climb(uri: str) -> None:
    try:
        check_uri(uri)
    except ValueError as err:
        assert "URI" in str(err)
        return
    scheme, _, rest = uri.partition("://")
    assert scheme in URI_SCHEMES
    assert ".." not in rest.split("/") and "\x00" not in uri


def test_known_hostile_uris_are_refused_with_the_field_named() -> None:
    for uri in TRAVERSAL_URIS + BAD_SCHEME_URIS:
        spec = {"baseModel": {"uri": "pvc://models/base"}, "adapter": {"uri": uri}}
        parsed, problems = outcome("FineTunedModel", spec)
        assert parsed is None, uri
        assert any(p.startswith("spec.adapter.uri:") for p in problems), (uri, problems)


def test_conflicting_references_are_refused() -> None:
    both = {"source": {"uri": "pvc://m/x", "fineTunedModelRef": {"name": "m"}}, "method": "gguf"}
    neither: dict[str, Any] = {"source": {}, "method": "gguf"}
    three = {
        "model": {"uri": "pvc://m/x", "fineTunedModelRef": {"name": "m"}, "quantizationJobRef": {"name": "q"}}
    }
    dupes = {"model": {"uri": "pvc://m/x"}, "lora": {"adapters": [{"name": "a", "uri": "pvc://a/1"},
                                                                  {"name": "a", "uri": "pvc://a/2"}]}}  # fmt: skip
    for kind, spec, field in [
        ("QuantizationJob", both, "spec.source"),
        ("QuantizationJob", neither, "spec.source"),
        ("InferenceService", three, "spec.model"),
        ("InferenceService", dupes, "spec.lora"),
    ]:
        parsed, problems = outcome(kind, spec)
        assert parsed is None, spec
        assert any(p.startswith(field) for p in problems), problems
