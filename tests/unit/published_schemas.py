"""Validation of rendered third-party kinds against those projects' published schemas, strictly.

KEDA's ScaledObject and Gateway API's HTTPRoute: npm's @kubernetes-models packages (scripts/get-crd-schemas.sh)
carry each project's schema twice: compiled validators (types, required fields, enums, patterns; run with node)
and TypeScript declarations listing every field of every object, which give the strictness the validators lack
(an unknown field is an error). The InferencePool of the Gateway API Inference Extension is published on no
package registry (npm, PyPI, Debian; see docs/routing.md): INFERENCE_POOL_V1 transcribes the fields of its v1
API reference.
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
