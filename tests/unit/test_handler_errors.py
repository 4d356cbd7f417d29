"""A reconcile that raises stays with its object: counted, logged, retried with a growing, bounded backoff."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from tuneops import handlers, metrics
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile.base import Context, Outcome

OBJ = {"apiVersion": "tuneops.io/v1alpha1", "kind": "FineTunedModel",
       "metadata": {"name": "m", "namespace": "ns", "generation": 1}, "spec": {}}  # fmt: skip


class Objects:
    def get(self, rtype: k.ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        return dict(OBJ)


def test_error_backoff_doubles_to_a_cap_with_jitter() -> None:
    mid = [handlers.error_backoff(n, rng=lambda: 0.5) for n in range(1, 12)]
    assert mid[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(mid) == handlers.ERROR_BACKOFF_CAP_S
    assert (
        handlers.error_backoff(3, rng=lambda: 0.0) == 3.0
        and handlers.error_backoff(3, rng=lambda: 1.0) == 5.0
    )


def test_an_exception_becomes_a_counted_temporary_error_and_success_resets_the_backoff() -> None:
    calls = {"n": 0}

    def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise KeyError("a field the code did not expect")
        return Outcome(ready=True, reason="Succeeded")

    tracker = handlers.Tracker()
    ctx = Context(kube=Objects(), config=OperatorConfig())  # type: ignore[arg-type]
    handle = handlers.make_handler(ctx, tracker, "FineTunedModel", reconcile)
    errors = metrics.RECONCILE_ERRORS.labels(kind="FineTunedModel")
    before = errors._value.get()
    delays = []
    for _ in range(3):
        with pytest.raises(kopf.TemporaryError) as err:
            handle(body=OBJ)
        delays.append(err.value.delay)
        assert "KeyError" in str(err.value)
    assert errors._value.get() - before == 3
    assert delays[0] < delays[1] < delays[2]  # 1, 2, 4 s (+-25%)
    handle(body=OBJ)  # succeeds
    assert tracker._failures == {}
