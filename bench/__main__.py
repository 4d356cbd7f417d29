"""`python -m bench [NAME ...] [OPTIONS]`: runs benchmark modules (bench/<name>.py) and prints one table.

A module exposes `run() -> list[dict]`; options this command does not know go to the one benchmark named
(`python -m bench scale --scenario b`: its `run(argv)`; `python -m bench scale --help` lists them). Each row has name, value, unit, and optionally baseline (measured in
the same run), ratio (value / baseline), target (e.g. "ratio <= 0.5", ">= 100", "identical") and ok. A row
whose target is missed makes the command exit 1, so `make bench` fails loudly on a regression. A row without a
target says why in `no_target` (shown in the target column); the rows that do neither are listed at the end.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def meets(row: dict[str, Any]) -> bool | None:
    """Whether a row meets its target: an explicit `ok`, else the target string read against ratio/value;
    None for a row without a target."""
    if isinstance(row.get("ok"), bool):
        return bool(row["ok"])
    target = row.get("target")
    if not target:
        return None
    m = re.fullmatch(r"\s*(ratio\s+)?(<=|>=|<|>)\s*([0-9.]+)\s*\S*\s*", str(target))
    if m is None:
        return str(row.get("value")) == str(target).strip()
    subject = row.get("ratio") if m.group(1) else row.get("value")
    if not isinstance(subject, int | float):
        return False
    bound = float(m.group(3))
    return {"<=": subject <= bound, ">=": subject >= bound, "<": subject < bound, ">": subject > bound}[
        m.group(2)
    ]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["name", "value", "unit", "baseline", "ratio", "target", "result"]
    cells = []
    for r in rows:
        verdict = meets(r)
        result = "" if verdict is None else ("ok" if verdict else "MISSED")
        shown = {**r, "target": r.get("target") or (f"none: {r['no_target']}" if r.get("no_target") else "")}
        cells.append([_fmt(shown.get(c)) if c != "result" else result for c in cols])
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__, add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="this help, or the named benchmark's")
    p.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(discover())})")
    p.add_argument("--json", type=Path, help="also write the rows to this file")
    args, extra = p.parse_known_args(argv)
    if args.help and len(args.names) != 1:
        p.print_help()
        return 0
    if args.help:
        extra = ["--help", *extra]
    names = args.names or discover()
    unknown = sorted(set(names) - set(discover()))
    if unknown:
        p.error(f"unknown benchmark(s): {', '.join(unknown)}")
    if extra and len(names) != 1:
        p.error(f"{' '.join(extra)}: a benchmark's own options need that one benchmark named")
    sys.path.insert(0, str(HERE.parent))
    rows: list[dict[str, Any]] = []
    failed = False
    for name in names:
        start = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.{name}")
            got = module.run(extra) if extra else module.run()
        except Exception:
            traceback.print_exc()
            rows.append({"name": f"{name}: error", "value": "error", "target": "ok", "ok": False})
            failed = True
            continue
        rows += got
        print(f"bench: {name} done in {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    missed = [r["name"] for r in rows if meets(r) is False]
    if missed:
        print(f"\ntargets missed: {'; '.join(missed)}", file=sys.stderr)
    silent = [r["name"] for r in rows if not r.get("target") and not r.get("no_target")]
    if silent:
        print(f"\nrows with neither a target nor a reason for none: {'; '.join(silent)}", file=sys.stderr)
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
