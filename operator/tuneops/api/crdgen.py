"""Generates the CustomResourceDefinitions from the pydantic models (structural, bounded, with CEL rules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from tuneops import GROUP, VERSION
from tuneops.api import CATEGORY, KINDS, KindInfo

# Keys of pydantic's JSON schema that have a Kubernetes OpenAPI v3 equivalent under the same name.
_PASSTHROUGH = {
    "type",
    "description",
    "enum",
    "default",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
}


class SchemaError(ValueError):
    """The models would produce a CRD the API server rejects or that leaves a field unbounded."""


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _convert(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(node, defs)
    if node.get("x-kubernetes-int-or-string"):
        return {k: v for k, v in node.items() if k in ("description", "x-kubernetes-int-or-string")}
    if "anyOf" in node:
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise SchemaError(f"{path}: unions other than Optional[X] cannot be expressed structurally")
        inner = _convert(variants[0], defs, path)
        for key in ("description", "default"):
            if key in node and node[key] is not None:
                inner[key] = node[key]
        if "x-kubernetes-validations" in node:
            inner.setdefault("x-kubernetes-validations", node["x-kubernetes-validations"])
        return inner
    if "const" in node:
        node = {**node, "enum": [node["const"]]}
    if "enum" in node and "type" not in node:
        kinds = {type(v) for v in node["enum"]}
        node = {**node, "type": "integer" if kinds == {int} else "string"}
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _PASSTHROUGH}
    if out.get("default", 0) is None:
        del out["default"]
    # JSON Schema 2020 writes exclusive bounds as numbers; OpenAPI v3.0 (Kubernetes) wants a bound + a flag.
    for bound, flag in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[flag] = out[bound]
            out[bound] = True
    typ = node.get("type")
    if typ == "object":
        props = node.get("properties")
        if props:
            out["properties"] = {
                name: _convert(sub, defs, f"{path}.{name}") for name, sub in sorted(props.items())
            }
            if node.get("required"):
                out["required"] = sorted(node["required"])
        elif isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = _convert(node["additionalProperties"], defs, f"{path}.*")
        elif not node.get("x-kubernetes-preserve-unknown-fields"):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif typ == "array":
        out["items"] = _convert(node["items"], defs, f"{path}[]")
        if "maxItems" not in out:
            raise SchemaError(f"{path}: every list needs a max_length (maxItems)")
    elif typ == "string" and "maxLength" not in out and "enum" not in out and "format" not in out:
        raise SchemaError(f"{path}: every string needs a max_length (maxLength)")
    return out


class _WithFactoryDefaults(GenerateJsonSchema):
    """Reflects default_factory fields as defaults, so the API server fills nested defaults in.

    A nested object defaults to `{}`: the server then applies the defaults of its own fields, which keeps
    one source of truth for each default value.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return {}
        return value if value is not None else NoDefault


def _strip(node: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in node.items() if k not in keys}
    if "properties" in out:
        out["properties"] = {n: _strip(sub, keys) for n, sub in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _strip(out[key], keys)
    return out


def openapi_schema(model: type[Any], *, defaults: bool = True, cel: bool = True) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, as Kubernetes wants it.

    `defaults=False` for status (the operator writes every field it means); `cel=False` drops the
    x-kubernetes-validations rules for API servers older than 1.25, which reject or ignore them (the
    operator validates the same rules itself and reports InvalidSpec).
    """
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)
    defs = raw.pop("$defs", {})
    schema = _convert(raw, defs, model.__name__)
    drop = set() if defaults else {"default"}
    if not cel:
        drop.add("x-kubernetes-validations")
    return _strip(schema, drop) if drop else schema


def crd(info: KindInfo[Any, Any], *, cel: bool = True) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind (`cel=False` for API servers older than 1.25)."""
    spec_schema = openapi_schema(info.spec, cel=cel)
    status_schema = openapi_schema(info.status, defaults=False, cel=False)
    subresources: dict[str, Any] = {"status": {}}
    if info.scale:
        subresources["scale"] = dict(info.scale)
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": subresources,
        "additionalPrinterColumns": info.printer_columns,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": info.description,
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string", "maxLength": 253},
                    "kind": {"type": "string", "maxLength": 63},
                    "metadata": {"type": "object"},
                    "spec": spec_schema,
                    "status": status_schema,
                },
            }
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.crd_name,
            "labels": {"app.kubernetes.io/name": "tuneops", "app.kubernetes.io/part-of": "tuneops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


def all_crds(*, cel: bool = True) -> list[dict[str, Any]]:
    return [crd(info, cel=cel) for info in KINDS.values()]


def dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj, sort_keys=False, width=120, allow_unicode=True)


def write(output: Path) -> list[Path]:
    """Write one file per CRD into `output`; returns the paths written."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    header = "# Generated by `tuneops crds` from operator/tuneops/api; do not edit.\n"
    for obj in all_crds():
        path = output / f"{obj['metadata']['name']}.yaml"
        path.write_text(header + dump(obj))
        written.append(path)
    return written
