"""kopf stops the whole operator when a watch is answered 404, as happens for a moment after an API server restart
(custom resources' routes come back after the server answers). The runner makes kopf retry it as it retries 429."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kopf._cogs.clients import errors, watching

from tuneops import runner


def test_a_404_on_a_watch_is_retried_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    async def flaky(**_: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise errors.APINotFoundError("404 page not found", status=404, headers={})
        yield {"type": "ADDED", "object": {"metadata": {"name": "m"}}}

    monkeypatch.setattr(watching, "continuous_watch", flaky)
    runner.retry_missing_routes()
    runner.retry_missing_routes()  # idempotent: wrapped once

    class Settings:
        class watching:
            reconnect_backoff = 0.01

    async def first_event() -> Any:
        stream = watching.infinite_watch(settings=Settings(), resource="finetunedmodels", namespace=None)
        async for event in stream:
            return event
        return None

    event = asyncio.run(asyncio.wait_for(first_event(), 5))
    assert event == {"type": "ADDED", "object": {"metadata": {"name": "m"}}}
    assert calls["n"] == 2, "the watch was made again after the 404"
    assert getattr(watching.continuous_watch, "_tuneops_retries_404", False)
