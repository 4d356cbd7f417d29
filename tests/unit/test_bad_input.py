"""Malformed and hostile specs: parsing accepts or refuses naming the field, and never fails any other way.

What is accepted passes the operator's checks and renders, or is refused by them naming the field; everything
it renders is restricted, secret-free and points only at allowed, non-climbing URIs. Specs here are mutated from
the fixed seeds of tests/unit/hostile.py and from generated valid specs (tests/unit/valid_specs.py), so that the
mutations reach every part of the spec; tests/unit/test_security.py renders the unmutated generated specs, every
one of them.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.unit.hostile import (
    BAD_SCHEME_URIS,
    TRAVERSAL_URIS,
    VALID,
    mutated_specs,
    resource,
    seed_specs,
    uris,
)
from tests.unit.render_support import assert_no_secrets, assert_restricted, validate
from tests.unit.valid_specs import CONFIG, Case, check_and_render, valid_cases
from tuneops.api import SpecError, parse_spec
from tuneops.api.common import MESSAGE_MAX, URI_SCHEMES, check_uri
from tuneops.render.plan import Resolver, check_resource, parse_documents, render_resource
from tuneops.render.serving.types import ServingRender
from tuneops.render.types import Manifest, RenderError

PROBLEM = re.compile(r"^spec(\.|\[|:)")
SETTINGS = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(kind: str, spec: Any) -> tuple[Any, list[str]]:
    """(parsed spec, []) or (None, problems). Any exception but SpecError fails the test."""
    try:
        return parse_spec(kind, resource(kind, spec)), []
    except SpecError as err:
        return None, err.problems


def render_checked(kind: str, spec: Any) -> tuple[list[Manifest] | None, list[str]]:
    """What the operator and `tuneops render` do with one resource (its references not in the input): parse,
    the operator's checks, render. (manifests, []) or (None, the problems that refused it, each naming its
    field). Any exception but a refusal fails the test."""
    try:
        [r] = parse_documents([resource(kind, spec)], namespace="ns")
    except SpecError as err:
        return None, err.problems
    resolver = Resolver([r], CONFIG)
    problems = check_resource(r, resolver).problems
    if problems:
        return None, [str(p) for p in problems]
    try:
        rendered = render_resource(r, resolver)
    except RenderError as err:  # what only rendering finds (`tuneops render` reports it and exits 2)
        return None, [str(err)]
    return (list(rendered.manifests) if isinstance(rendered, ServingRender) else rendered), []


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
            assert check_and_render(Case([resource(kind, spec)])), (kind, spec)


def subjects() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """Generated valid specs as seeds (the resource under test alone: what it references is not in the input)."""
    return valid_cases().map(lambda case: (case.kind, case.spec))


@SETTINGS
@given(mutated_specs(seeds=seed_specs() | subjects()))
def test_hostile_specs_are_accepted_or_refused_naming_the_field(case: tuple[str, dict[str, Any]]) -> None:
    kind, spec = case
    manifests, problems = render_checked(kind, spec)
    if manifests is None:
        event("refused")
        assert problems
        for p in problems:
            assert PROBLEM.match(p), p
        # The reconciler puts these into a condition message, which the CRD bounds.
        assert len("; ".join(problems)) <= MESSAGE_MAX
        return
    event("rendered")
    parsed, _ = outcome(kind, spec)
    for uri in uris_in(parsed.wire()):
        scheme, _, rest = uri.partition("://")
        assert scheme in URI_SCHEMES and ".." not in rest.split("/"), uri
    assert_restricted(manifests)
    assert_no_secrets(manifests)


GPU_PRODUCT = {"model": {"uri": "hf://org/model"}, "resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"}}
MALFORMED_AFFINITY = [
    {"nodeAffinity": None},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": None}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": None}}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [None]}}},
    {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": True}}},
]


def test_a_malformed_affinity_is_refused_naming_it_or_rendered_as_a_valid_pod() -> None:
    """spec.affinity is passed through unchecked by the schema (core/v1 Affinity); with resources.gpuProduct the
    renderer adds a term to it. What a tenant writes there must not crash the renderer (the reconciler would
    fail on every pass) nor reach the API server as a Pod it rejects."""
    for affinity in MALFORMED_AFFINITY:
        manifests, problems = render_checked("InferenceService", {**GPU_PRODUCT, "affinity": affinity})
        if manifests is None:
            assert any(p.startswith("spec.affinity") for p in problems), (affinity, problems)
            continue
        for m in manifests:
            validate(m)


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
