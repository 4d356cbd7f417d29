"""The docs say what the code does: every reason the operator writes has a row in docs/troubleshooting.md
(reason -> meaning -> fix), and the default output path is written as `<root>/<namespace>/<kind plural>/<name>`
wherever it is written."""

from __future__ import annotations

import re
from pathlib import Path

from tuneops.api.conditions import TERMINAL_REASONS, Reason

ROOT = Path(__file__).resolve().parents[2]
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def _reasons() -> set[str]:
    return {v for k, v in vars(Reason).items() if k.isupper() and isinstance(v, str)}


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in TROUBLESHOOTING.read_text().splitlines():
        m = re.match(r"\| `([A-Za-z]+)` \|(.*)\|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [m.group(2).strip(), m.group(3).strip()]
    return rows


def test_every_reason_has_a_meaning_and_a_fix() -> None:
    rows = _rows()
    missing = sorted(_reasons() - set(rows))
    assert not missing, f"reasons with no row in docs/troubleshooting.md: {missing}"
    stale = sorted(set(rows) - _reasons())
    assert not stale, f"rows for reasons the operator does not write: {stale}"
    assert all(meaning and fix for meaning, fix in rows.values())


def test_every_terminal_reason_says_how_to_get_past_it() -> None:
    rows = _rows()
    for reason in TERMINAL_REASONS:
        assert rows[reason][1] != "Nothing.", reason


def test_the_readme_points_to_troubleshooting() -> None:
    assert "docs/troubleshooting.md" in (ROOT / "README.md").read_text()


# Where the default output location is written for people: docs, README, the chart's values and the code's
# docstrings (which become the CRDs' descriptions).
OUTPUT_PATH = re.compile(
    r"(?:<root>|<config\.artifactRoot>|artifact.?root[^/\n]{0,40}?|tuneops-artifacts)/<(?:ns|namespace)>/(<kind plural>|[^\s`)'\"]+)"
)


def _written_places() -> list[Path]:
    places = [ROOT / "README.md", ROOT / "charts" / "tuneops" / "values.yaml"]
    places += sorted((ROOT / "docs").glob("*.md"))
    places += sorted((ROOT / "operator" / "tuneops").rglob("*.py"))
    places += sorted((ROOT / "crds").glob("*.yaml"))
    return places


def test_the_output_path_convention_is_the_same_everywhere() -> None:
    found, wrong = 0, []
    for path in _written_places():
        for m in OUTPUT_PATH.finditer(path.read_text()):
            found += 1
            rest = m.group(1)
            if not re.match(r"(<kind plural>|<plural>|finetunedmodels|quantizationjobs)(/|$)", rest):
                wrong.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert found >= 4, "the pattern no longer finds where the convention is written"
    assert not wrong, f"output path not written as <root>/<namespace>/<kind plural>/<name>: {wrong}"
