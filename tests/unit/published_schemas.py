"""Validation of rendered third-party kinds against those projects' published schemas, strictly.

KEDA's ScaledObject and Gateway API's HTTPRoute: npm's @kubernetes-models packages (scripts/get-crd-schemas.sh)
carry each project's schema twice: compiled validators (types, required fields, enums, patterns; run with node)
and TypeScript declarations listing every field of every object, which give the strictness the validators lack
(an unknown field is an error). The InferencePool of the Gateway API Inference Extension is published on no
package registry (npm, PyPI, Debian; see docs/routing.md): INFERENCE_POOL_V1 transcribes the fields of its v1
API reference.
The same declarations (and the transcription) also give the CRDs the integration tests install (`crd_schema`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TUNEOPS_CACHE", Path.home() / ".cache" / "tuneops"))
SCHEMAS = CACHE / "crd-schemas-keda2.0.0-gateway2.0.0"
MODELS = SCHEMAS / "node_modules" / "@kubernetes-models"
PACKAGES = {"keda.sh": "keda", "gateway.networking.k8s.io": "gateway-api"}
GROUPS = (*PACKAGES, "inference.networking.k8s.io")


def ensure() -> Path:
    """The cached packages, fetched with npm on first use."""
    if not (SCHEMAS / ".complete").exists():
        subprocess.run([str(ROOT / "scripts" / "get-crd-schemas.sh")], check=True, capture_output=True)
    return SCHEMAS


_IMPORT = re.compile(r'import \{ (\w+) \} from "([^"]+)"')
_CLASS = re.compile(
    r"export declare class \w+ extends Model<\w+> implements \w+ \{\n(.*?)\n    constructor", re.S
)
_FIELD = re.compile(r'^    "([^"]+)"\??: (.*)$', re.M)


def _resolve(here: Path, spec: str) -> Path:
    if spec.startswith("."):
        return (here.parent / spec).with_suffix(".d.ts")
    return (MODELS.parent / spec).with_suffix(".d.ts")


@cache
def fields(declaration: Path) -> dict[str, Path | None] | None:
    """The fields of the object a .d.ts declares, each with the declaration of its value (None: a plain value
    or a free-form map); None when the file declares no object (a string or number alias)."""
    text = declaration.read_text()
    body = _CLASS.search(text)
    if body is None:
        return None
    imports = {name: _resolve(declaration, spec) for name, spec in _IMPORT.findall(text)}
    out: dict[str, Path | None] = {}
    for name, type_ in _FIELD.findall(body.group(1)):
        inner = re.fullmatch(r"Array<(\w+)>;?", type_) or re.fullmatch(r"(\w+);?", type_)
        out[name] = imports.get(inner.group(1)) if inner else None
    return out


def unknown_fields(obj: Any, declaration: Path | None, path: str = "") -> list[str]:
    if declaration is None:
        return []
    if isinstance(obj, list):
        return [e for i, item in enumerate(obj) for e in unknown_fields(item, declaration, f"{path}[{i}]")]
    known = fields(declaration)
    if known is None or not isinstance(obj, dict):
        return []
    errors = []
    for key, value in obj.items():
        where = f"{path}.{key}" if path else key
        if key not in known:
            errors.append(f"{where}: unknown field (not in {declaration.name.removesuffix('.d.ts')})")
        else:
            errors.extend(unknown_fields(value, known[key], where))
    return errors


def _declaration(obj: dict[str, Any]) -> Path:
    group, version = str(obj["apiVersion"]).split("/")
    return MODELS / PACKAGES[group] / group / version / f"{obj['kind']}.d.ts"


# Fields of inference.networking.k8s.io/v1 InferencePool's spec (API reference of the Gateway API Inference
# Extension, v1), with its bounds; strict like the API server's field validation.
_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
_PORT = {"type": "object", "additionalProperties": False, "required": ["number"],
         "properties": {"number": {"type": "integer", "minimum": 1, "maximum": 65535}}}  # fmt: skip
INFERENCE_POOL_V1: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "inference.networking.k8s.io/v1"},
        "kind": {"const": "InferencePool"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["endpointPickerRef", "selector", "targetPorts"],
            "properties": {
                "endpointPickerRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "group": {"type": "string", "maxLength": 253},
                        "kind": {"type": "string", "minLength": 1, "maxLength": 63},
                        "name": _NAME,
                        "port": _PORT,
                        "failureMode": {"enum": ["FailOpen", "FailClose"]},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "minProperties": 1,
                            "maxProperties": 64,
                            "additionalProperties": {"type": "string", "maxLength": 63},
                        }
                    },
                },
                "targetPorts": {"type": "array", "minItems": 1, "maxItems": 8, "items": _PORT},
                "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
            },
        },
    },
}


def errors(objects: list[dict[str, Any]]) -> list[list[str]]:
    """Per object (third-party kinds only): what its published schema says is wrong with it (empty: valid)."""
    root = ensure()
    published = [o for o in objects if o["apiVersion"].split("/")[0] in PACKAGES]
    ran = subprocess.run(
        ["node", str(Path(__file__).with_name("published_schemas.mjs")), str(root)],
        input=json.dumps(published), capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    by_node = iter(json.loads(ran.stdout))
    out = []
    for obj in objects:
        if obj["kind"] == "InferencePool":
            validator = jsonschema.Draft7Validator(INFERENCE_POOL_V1)
            out.append(
                [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]
            )
        else:
            out.append([*next(by_node), *unknown_fields(obj, _declaration(obj))])
    return out


# -- the same schemas as a CRD's openAPIV3Schema (tests/integration/test_autoscaling.py installs them) ---------

_MEMBER = re.compile(r'^    "([^"]+)"(\??): ', re.M)
_ALIAS = re.compile(r"^export type I\w+ = ([^;]+);", re.M)
_PLAIN = {"string": "string", "number": "number", "boolean": "boolean"}


def _members(body: str) -> list[tuple[str, bool, str]]:
    """(name, required, type) of each field of a class body; a type may span lines (an inline map)."""
    out = []
    for m in _MEMBER.finditer(body):
        depth, end = 0, m.end()
        while depth or body[end] != ";":
            depth += {"{": 1, "<": 1, "}": -1, ">": -1}.get(body[end], 0)
            end += 1
        out.append((m.group(1), not m.group(2), " ".join(body[m.end() : end].split())))
    return out


def _openapi(type_: str, imports: dict[str, Path], within: tuple[Path, ...]) -> dict[str, Any]:
    if type_ in _PLAIN:
        return {"type": _PLAIN[type_]}
    literals = type_.split(" | ")
    if all(re.fullmatch(r'"[^"]*"|\d+', t) for t in literals):
        values = [json.loads(t) for t in literals]
        return {"type": "string" if isinstance(values[0], str) else "integer", "enum": values}
    if sorted(literals) == ["number", "string"]:  # a Kubernetes quantity or IntOrString
        return {"x-kubernetes-int-or-string": True}
    if inner := re.fullmatch(r"Array<(.+)>", type_):
        return {"type": "array", "items": _openapi(inner.group(1), imports, within)}
    if inner := re.fullmatch(r"\{ \[key: string\]: (.+); \}", type_):
        return {"type": "object", "additionalProperties": _openapi(inner.group(1), imports, within)}
    if type_ in imports:
        return openapi_schema(imports[type_], within)
    raise ValueError(f"{within[-1].name}: no OpenAPI schema for the TypeScript type {type_!r}")


def openapi_schema(declaration: Path, within: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The structural OpenAPI v3 schema (as a CRD holds it) of what a @kubernetes-models .d.ts declares: each field
    of its class with its type, required unless optional. The declarations carry no bounds or patterns (the
    package's validators check those, in `errors`); numbers are `number`, which holds integers too."""
    if declaration.name == "ObjectMeta.d.ts":
        return {"type": "object"}  # the API server keeps metadata's schema itself; a CRD may not restate it
    if declaration in within:
        raise ValueError(f"{declaration.name} contains itself: no structural schema")
    text = declaration.read_text()
    imports = {name: _resolve(declaration, spec) for name, spec in _IMPORT.findall(text)}
    body = _CLASS.search(text)
    if body is None:
        alias = _ALIAS.search(text)
        if alias is None:
            raise ValueError(f"{declaration}: neither a class nor a type alias")
        return _openapi(" ".join(alias.group(1).split()), imports, (*within, declaration))
    members = _members(body.group(1))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {n: _openapi(t, imports, (*within, declaration)) for n, _, t in members},
    }
    required = sorted(n for n, needed, _ in members if needed)
    return schema | ({"required": required} if required else {})


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema as an API server takes it in a CRD: every node typed (enums here are strings), no `const`, no
    `additionalProperties` beside `properties` (the API server drops unknown fields there anyway)."""
    out = {k: v for k, v in schema.items() if k not in ("const", "$schema")}
    if "const" in schema:
        out["enum"] = [schema["const"]]
    if "enum" in out:
        out.setdefault("type", "string")
    if "properties" in out:
        out.pop("additionalProperties", None)
        out["properties"] = {k: structural(v) for k, v in out["properties"].items()}
    elif isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = structural(out["additionalProperties"])
    if "items" in out:
        out["items"] = structural(out["items"])
    return out


def crd_schema(obj: dict[str, Any]) -> dict[str, Any]:
    """The openAPIV3Schema of a CRD serving `obj`'s kind, from its published schema (for InferencePool, which no
    registry publishes, from the transcription INFERENCE_POOL_V1)."""
    if obj["kind"] == "InferencePool":
        return structural(INFERENCE_POOL_V1)
    ensure()
    return openapi_schema(_declaration(obj))
