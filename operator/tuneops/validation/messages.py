"""Validation errors in words a person can act on: a 'did you mean' for unknown fields, names for patterns."""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from tuneops.api.common import URI_SCHEMES

_SCHEMES = ", ".join(s + "://" for s in URI_SCHEMES)
# org/name or org/name@revision: a Hugging Face repository written without its scheme.
_HF_REPO = re.compile(r"^[A-Za-z0-9][-\w.]*/[-\w.]+(@\S+)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

# The patterns of the API's constrained strings (api/common.py), said in words instead of as a regex.
_PATTERNS = {
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$": "must be a DNS-1123 name: lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit",
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$": "must be a DNS-1123 label: lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
    r"^[-._a-zA-Z0-9]+$": "may contain only letters, digits, '-', '_' and '.'",
    r"^[-._a-zA-Z][-._a-zA-Z0-9]*$": "must be an environment variable name (letters, digits, '-', '_', '.'; "
    "not starting with a digit)",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's annotation may hold (through Optional, unions, lists, dicts, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def _models_at(model: type[BaseModel], path: tuple[int | str, ...]) -> list[type[BaseModel]]:
    """The models an object at `path` (camelCase field names, list indexes) inside `model` is validated as."""
    candidates = [model]
    for part in path:
        if isinstance(part, int):
            continue  # list items: _models_in already looked through the list type
        found: list[type[BaseModel]] = []
        for m in candidates:
            for name, info in m.model_fields.items():
                if part in (name, info.alias):
                    found += _models_in(info.annotation)
        candidates = found
    return candidates


def known_fields(model: type[BaseModel], path: tuple[int | str, ...]) -> list[str]:
    """The field names (as written in YAML) an object at `path` inside `model` may have."""
    return sorted(
        {info.alias or name for m in _models_at(model, path) for name, info in m.model_fields.items()}
    )


def unknown_field(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"unknown field {name!r}; did you mean {close[0]!r}?"
    if known and len(known) <= 12:
        return f"unknown field {name!r}; expected one of {', '.join(known)}"
    return f"unknown field {name!r}"


def uri_problem(value: Any) -> str:
    if isinstance(value, str) and _HF_REPO.match(value):
        return f"{_short(value)} has no scheme; for a Hugging Face model write 'hf://{value}'"
    return f"unsupported URI {_short(value)}: use one of {_SCHEMES}"


def message(error: ErrorDetails, loc: tuple[int | str, ...], model: type[BaseModel] | None = None) -> str:
    """One pydantic error as a short sentence about the field at `loc` (the spec model is `model`)."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden" and loc and isinstance(loc[-1], str):
        return unknown_field(loc[-1], known_fields(model, loc[:-1]) if model else [])
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        if pattern.startswith("^(hf|s3|pvc|file)://"):
            return uri_problem(error["input"])
        if pattern in _PATTERNS:
            return f"{_short(error['input'])} {_PATTERNS[pattern]}"
    return error["msg"].removeprefix("Value error, ")


def name_problem(name: Any, *, label: bool = False) -> str | None:
    """Why `name` is not a valid object name (DNS-1123 subdomain, or label for namespaces); None when it is."""
    if not isinstance(name, str) or not name:
        return "is required"
    limit, pattern = (63, _DNS_LABEL) if label else (253, _DNS_SUBDOMAIN)
    if len(name) > limit:
        return f"{_short(name)} is longer than {limit} characters"
    if not pattern.match(name):
        what = "label" if label else "subdomain"
        allowed = "lowercase letters, digits and '-'" if label else "lowercase letters, digits, '-' and '.'"
        return f"{_short(name)} is not a DNS-1123 {what}: use {allowed}, starting and ending with a letter or digit"
    return None


__all__ = ["known_fields", "message", "name_problem", "unknown_field", "uri_problem"]
