"""A reference that never becomes Ready (a misspelled name) does not wait quietly forever: after the operator
config's waitingWarningSeconds, Ready's message says what to check and one Warning Event is written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.helpers import qjob
from tests.integration.operator_bed import Cluster


def test_waiting_for_source_becomes_a_warning_after_the_configured_time(
    start_operator: Callable[..., Any],
    cluster: Cluster,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
    tmp_path: Path,
) -> None:
    config = tmp_path / "operator.yaml"
    config.write_text("waitingWarningSeconds: 3\n")
    op = start_operator(TUNEOPS_CONFIG=str(config))
    op.wait_serving()
    kubectl.apply(qjob("q", source="no-such-model"), namespace=namespace)

    def ready() -> dict[str, Any] | None:
        return cluster.ready("quantizationjobs", namespace, "q")

    wait_until(lambda: (ready() or {}).get("reason") == "WaitingForSource", what="WaitingForSource")
    first = ready()
    assert first is not None and "still waiting" not in first["message"]

    def warned() -> list[Any]:
        return [
            e
            for e in cluster.events(namespace, "q")
            if e.type == "Warning" and e.reason == "WaitingForSource"
        ]

    found = wait_until(warned, timeout=30, what="a Warning WaitingForSource Event")
    message = (ready() or {}).get("message", "")
    assert "still waiting after 3s" in message and "kubectl get" in message, message
    assert "still waiting after 3s" in found[0].message
    obj = cluster.get("quantizationjobs", namespace, "q")
    assert obj is not None and obj["status"]["phase"] == "Waiting", "still waiting, not failed"
    # Once: the next passes write neither another Event nor another status.
    version = obj["metadata"]["resourceVersion"]
    import time

    time.sleep(4)
    assert len(warned()) == 1 and (warned()[0].count or 1) == 1
    after = cluster.get("quantizationjobs", namespace, "q")
    assert after is not None and after["metadata"]["resourceVersion"] == version
