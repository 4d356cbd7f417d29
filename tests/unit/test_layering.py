"""The embedded cluster (tuneops.local) is a development tool: the operator never imports it, so the operator
image can leave it out. Only the CLI's `local` and `demo` commands reach it, lazily."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "tuneops"
ALLOWED = {("cli.py", "_delegate")}


def _imports_of_local(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, enclosing function) of each import of tuneops.local in a module."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else func
            if isinstance(child, ast.ImportFrom) and child.module:
                mods = [child.module] + [f"{child.module}.{a.name}" for a in child.names]
                if any(m == "tuneops.local" or m.startswith("tuneops.local.") for m in mods):
                    found.append((child.lineno, func))
            elif isinstance(child, ast.Import) and any(
                a.name.startswith("tuneops.local") for a in child.names
            ):
                found.append((child.lineno, func))
            visit(child, name)

    visit(tree, "<module>")
    return found


def test_only_the_cli_reaches_the_embedded_cluster() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "local":
            continue
        for line, func in _imports_of_local(ast.parse(path.read_text(), str(path))):
            if (str(rel), func) not in ALLOWED:
                offenders.append(f"{rel}:{line} ({func})")
    assert not offenders, f"the operator imports the embedded cluster: {offenders}"


def test_the_check_sees_an_import() -> None:
    tree = ast.parse("def f():\n    from tuneops.local import node\nimport tuneops.local.pod\n")
    assert _imports_of_local(tree) == [(2, "f"), (3, "<module>")]
