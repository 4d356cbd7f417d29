"""Shared pytest configuration: in CI (CI=true) a skipped test fails the run."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.integration.operator_fixtures"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        names = ", ".join(getattr(r, "nodeid", "?") for r in skipped[:20])
        print(f"\nCI=true: {len(skipped)} skipped test(s) count as failures: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
