"""Offline validation of custom resources against the generated CRDs: OpenAPI schema and CEL rules."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from tuneops.api import KINDS, crdgen


def crd_schema(kind: str) -> dict[str, Any]:
    return crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    """Like the API server with strict field validation: unknown fields are errors, not pruned."""
    node = copy.deepcopy(node)
    if (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        node["additionalProperties"] = False
    for key in ("properties",):
        for name, sub in list(node.get(key, {}).items()):
            node[key][name] = _strict(sub)
    if "items" in node:
        node["items"] = _strict(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    return node


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """OpenAPI errors as 'field.path: message' (the path the API server would name)."""
    schema = _strict(crd_schema(obj["kind"]))
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for err in validator.iter_errors(obj):
        path = ".".join(str(p) for p in err.absolute_path)
        out.append(f"{path}: {err.message}")
    return sorted(out)


def _rules(node: dict[str, Any], obj: Any, path: str) -> list[tuple[str, str, Any]]:
    found = []
    for rule in node.get("x-kubernetes-validations", []):
        found.append((path, rule["rule"], obj))
    if isinstance(obj, dict):
        for name, sub in node.get("properties", {}).items():
            if name in obj:
                found.extend(_rules(sub, obj[name], f"{path}.{name}"))
    if isinstance(obj, list) and "items" in node:
        for i, item in enumerate(obj):
            found.extend(_rules(node["items"], item, f"{path}[{i}]"))
    return found


def apply_defaults(node: dict[str, Any], obj: Any) -> Any:
    """Structural defaulting, as the API server does before validation."""
    obj = copy.deepcopy(obj)
    if isinstance(obj, dict):
        for name, sub in node.get("properties", {}).items():
            if name not in obj and "default" in sub:
                obj[name] = copy.deepcopy(sub["default"])
            if name in obj:
                obj[name] = apply_defaults(sub, obj[name])
    elif isinstance(obj, list) and "items" in node:
        obj = [apply_defaults(node["items"], item) for item in obj]
    return obj


def cel_errors(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Evaluate every CEL rule of the CRD on the object (the API server does this from Kubernetes 1.25)."""
    schema = crd_schema(obj["kind"])
    obj = apply_defaults(schema, obj)
    old = apply_defaults(schema, old) if old is not None else None
    env = celpy.Environment()
    errors = []
    messages = {}
    for rule in _all_rules(schema):
        messages[rule["rule"]] = rule.get("message", rule["rule"])
    old_by_path = {p: o for p, _, o in _rules(schema, old, "")} if old is not None else {}
    for path, rule, value in _rules(schema, obj, ""):
        if "oldSelf" in rule and path not in old_by_path:
            continue  # transition rules only run on update
        act: dict[str, Any] = {"self": celpy.json_to_cel(value)}
        if "oldSelf" in rule:
            act["oldSelf"] = celpy.json_to_cel(old_by_path[path])
        result = env.program(env.compile(rule)).evaluate(act)
        if result is not True and not (isinstance(result, celpy.celtypes.BoolType) and bool(result)):
            errors.append(f"{path.lstrip('.')}: {messages[rule]}")
    return errors


def _all_rules(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = list(node.get("x-kubernetes-validations", []))
    for sub in node.get("properties", {}).values():
        out.extend(_all_rules(sub))
    if "items" in node:
        out.extend(_all_rules(node["items"]))
    return out
