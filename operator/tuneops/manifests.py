"""Reads resource files the way `kubectl -f` does: files, folders, stdin, multi-document YAML, JSON and Lists."""

from __future__ import annotations

import difflib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneops import API_VERSION, GROUP
from tuneops.api import KINDS
from tuneops.validation.messages import name_problem

# What kubectl reads from a folder; a file named on the command line is read whatever its name.
EXTENSIONS = (".json", ".yaml", ".yml")


class InputError(ValueError):
    """Input that cannot be read as Kubernetes objects; the message is one line naming the file."""


@dataclass(frozen=True)
class Document:
    """One Kubernetes object from the input, and where it came from (`file#document`, `.items[i]` in a List)."""

    where: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind") or "")

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name") or "?")


def files(paths: Sequence[str], *, recursive: bool = False) -> Iterator[str]:
    """The files `paths` name: a folder gives its .json/.yaml/.yml files in sorted order (subfolders with
    `recursive`); `-` is stdin."""
    for p in paths:
        if p == "-":
            yield p
            continue
        path = Path(p)
        if not path.exists():
            raise InputError(f"{p}: no such file or directory")
        if not path.is_dir():
            yield p
            continue
        found = sorted(
            f
            for f in (path.rglob("*") if recursive else path.iterdir())
            if f.suffix in EXTENSIONS and f.is_file()
        )
        if not found:
            more = "" if recursive else " (subfolders are read with -R)"
            raise InputError(f"{p}: no {', '.join(EXTENSIONS)} files in this folder{more}")
        yield from (str(f) for f in found)


def _read(p: str) -> str:
    if p == "-":
        return sys.stdin.read()
    try:
        return Path(p).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not UTF-8 text") from None
    except OSError as err:
        raise InputError(f"{p}: {err.strerror or err}") from None


def _parse(p: str, text: str) -> list[Any]:
    """The documents of one file; JSON files as JSON (one object), everything else as YAML."""
    if p.endswith(".json"):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as err:
            raise InputError(f"{p}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from None
    try:
        return list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else p
        what = err.problem or err.context or "cannot be parsed"
        if err.context and err.problem:
            started = f" started at line {err.context_mark.line + 1}" if err.context_mark else ""
            what += f" ({err.context}{started})"
        raise InputError(f"{where}: invalid YAML: {what}") from None
    except yaml.YAMLError as err:
        raise InputError(f"{p}: invalid YAML: {' '.join(str(err).split())}") from None


def _objects(where: str, doc: Any) -> Iterator[Document]:
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected a Kubernetes object (a mapping), got {type(doc).__name__}")
    kind = str(doc.get("kind") or "")
    if kind.endswith("List") and "items" in doc:
        items = doc["items"] or []
        if not isinstance(items, list):
            raise InputError(f"{where}: {kind}.items must be a list")
        for i, item in enumerate(items):
            yield from _objects(f"{where}.items[{i}]", item)
        return
    yield Document(where, doc)


def load(paths: Sequence[str], *, recursive: bool = False) -> list[Document]:
    """Every object in `paths`, Lists expanded; raises InputError on what kubectl would not read."""
    out: list[Document] = []
    for p in files(paths, recursive=recursive):
        name = "stdin" if p == "-" else p
        for i, doc in enumerate(_parse(name, _read(p))):
            if doc is not None:
                out.extend(_objects(f"{name}#{i + 1}", doc))
    if not out:
        raise InputError(f"no objects in {', '.join(paths)}")
    return out


def object_problems(doc: Document) -> list[str]:
    """What the API server would refuse about a tuneops object before looking at its spec (empty when none)."""
    obj, kind = doc.obj, doc.kind
    group = str(obj.get("apiVersion") or "").split("/")[0]
    if not kind:
        return ["kind is required"]
    if kind not in KINDS:
        if group != GROUP:
            return []  # not ours: left to kubectl
        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(KINDS)}"
        return [f"unknown kind {kind!r} in {API_VERSION}; {hint}"]
    meta = obj.get("metadata") or {}
    if not isinstance(meta, dict):
        return ["metadata must be a mapping"]
    problems = []
    bad_name = name_problem(meta.get("name"))
    if bad_name:
        problems.append(f"metadata.name: {bad_name}")
    if meta.get("namespace") is not None:
        bad_ns = name_problem(meta.get("namespace"), label=True)
        if bad_ns:
            problems.append(f"metadata.namespace: {bad_ns}")
    return problems
