"""Hypothesis strategies for malformed and hostile resources: wrong types, huge and odd strings, bad URIs, bad refs."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import strategies as st

API = "tuneops.io/v1alpha1"

# One valid spec per shape worth mutating; each renders without problems.
VALID: dict[str, list[dict[str, Any]]] = {
    "FineTunedModel": [
        {"baseModel": {"uri": "pvc://models/base"}, "adapter": {"uri": "pvc://adapters/a"}},
        {"baseModel": {"uri": "hf://org/base", "revision": "main", "tokenSecretRef": {"name": "hf", "key": "token"}},
         "adapter": {"uri": "s3://bucket/adapter", "tokenSecretRef": {"name": "s3"}},
         "merge": {"enabled": True, "dtype": "bfloat16", "device": "gpu"},
         "output": {"uri": "pvc://out/merged"},
         "job": {"resources": {"limits": {"memory": "16Gi", "nvidia.com/gpu": 1}}, "backoffLimit": 2}},
    ],
    "QuantizationJob": [
        {"source": {"uri": "pvc://models/m"}, "method": "gguf", "gguf": {"quantTypes": ["Q4_K_M", "Q8_0"]},
         "qualityGate": {"maxPerplexityIncreasePct": 5}},
        {"source": {"fineTunedModelRef": {"name": "m"}}, "method": "awq", "awq": {"groupSize": 128}},
    ],
    "InferenceService": [
        {"model": {"uri": "pvc://models/m"}, "apiKeySecretRef": {"name": "api"},
         "lora": {"adapters": [{"name": "a", "uri": "pvc://adapters/a"}, {"name": "b", "fineTunedModelRef": {"name": "m"}}]}},
        {"runtime": "llamacpp", "model": {"uri": "pvc://models/m.gguf"}, "replicas": 2},
        {"model": {"quantizationJobRef": {"name": "q"}}, "replicas": 0},
    ],
}  # fmt: skip

TRAVERSAL_URIS = [
    "pvc://claim/../../etc",
    "pvc://claim/..",
    "pvc://claim/a/../../b",
    "file:///../etc/passwd",
    "file:///models/../../etc/shadow",
    "hf://org/../x",
    "s3://bucket/../../other",
]
BAD_SCHEME_URIS = [
    "http://example.com/model",
    "https://example.com/model",
    "ftp://x/y",
    "gs://bucket/x",
    "javascript:alert(1)",
    "PVC://claim/x",
    "pvc:/claim/x",
    "pvc://",
    "/etc/passwd",
    "../../etc",
    "pvc://claim/a b",
    "pvc://claim/x\x00y",
    "pvc://claim/\n",
    "",
]
# Strings that are fine to the schema but mean something to a shell, YAML, a log line or a terminal.
ODD_STRINGS = ["$(cat /etc/passwd)", "`id`", "a; rm -rf /", "--api-key=x", "-", "a\nb", "\u202egnp.exe", "null",
               "true", "0x10", "{{ .Values }}", "${HOME}", "%s%s%s", "\\x00", "名前", "💥"]  # fmt: skip
SCHEMES = ["hf", "s3", "pvc", "file", "http", "https", "ftp", "gs", "HF", "data", "ssh", ""]
SEGMENTS = ["..", ".", "", "a", "etc", "passwd", "%2e%2e", "..%2f", "\u2025", "ü", "\x00", " ", "model.gguf"]


def uris() -> st.SearchStrategy[str]:
    """URIs from any scheme and path segments that include traversal, encodings and control characters."""
    built = st.builds(
        lambda scheme, segs: f"{scheme}://{'/'.join(segs)}",
        st.sampled_from(SCHEMES),
        st.lists(st.sampled_from(SEGMENTS) | st.text(max_size=8), min_size=0, max_size=6),
    )
    return st.sampled_from(TRAVERSAL_URIS + BAD_SCHEME_URIS) | built


def huge_strings() -> st.SearchStrategy[str]:
    return st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "é", "\u202e", "0", "-", "💥"]),
                     st.integers(250, 100_000))  # fmt: skip


def hostile_values() -> st.SearchStrategy[Any]:
    """Anything a YAML document can put where a field is expected."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=40)
        | huge_strings()
        | uris()
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
        max_leaves=8,
    )


def refs() -> st.SearchStrategy[Any]:
    """References: missing, other-namespace, hostile names, self-references (name 'self')."""
    names = st.sampled_from(
        ["self", "missing", "m", "q", "a" * 300, "Bad_Name", "../x", "x/y", ""]
    ) | st.text(max_size=20)
    namespaces = (
        st.none()
        | st.sampled_from(["other", "kube-system", "default", "BAD", "a" * 70])
        | st.text(max_size=10)
    )
    return st.builds(lambda n, ns: {"name": n} if ns is None else {"name": n, "namespace": ns}, names, namespaces)  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    return doc


def seed_specs(kind: str | None = None) -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """The fixed valid specs above, as (kind, spec)."""
    kinds = [kind] if kind else sorted(VALID)
    return st.sampled_from([(k, spec) for k in kinds for spec in VALID[k]])


@st.composite
def mutated_specs(
    draw: st.DrawFn,
    kind: str | None = None,
    seeds: st.SearchStrategy[tuple[str, dict[str, Any]]] | None = None,
) -> tuple[str, dict[str, Any]]:
    """A valid spec (of `kind`, drawn from `seeds`: by default the fixed ones above) with one or two places
    replaced, dropped, or new keys added, by hostile values."""
    kind, seed = draw(seeds if seeds is not None else seed_specs(kind))
    spec = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 2))):
        paths = _paths(spec)[1:]
        how = draw(st.sampled_from(["replace", "uri", "ref", "add", "drop", "string", "string"]))
        path = draw(st.sampled_from(paths)) if paths else ()
        if how == "drop" and path:
            parent = spec
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
        elif how == "add":
            parent = spec
            for part in path[:-1]:
                parent = parent[part]
            if isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=12))] = draw(hostile_values())
        elif how == "string" and path and isinstance(_get(spec, path), str) and path[-1] != "uri":
            spec = _set(spec, path, draw(st.sampled_from(ODD_STRINGS) | st.text(max_size=30)))
        elif how == "uri" or (path and path[-1] == "uri"):
            spec = _set(spec, path, draw(uris()))
        elif how == "ref" or (path and str(path[-1]).endswith("Ref")):
            spec = _set(spec, path, draw(refs()))
        else:
            spec = _set(spec, path, draw(hostile_values()))
    return kind, spec


def resource(kind: str, spec: Any, name: str = "r", namespace: str = "ns") -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": namespace}, "spec": spec}
