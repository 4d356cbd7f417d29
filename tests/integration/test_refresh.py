"""New weights under the same adapter URI: the tuneops.io/refresh annotation reads the adapter again; a new
digest re-merges, the same digest does not."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from tests.integration.helpers import ADAPTER_RESULT, complete, ftm, job_named, merge_result, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess

STEP = "app.kubernetes.io/component"


def _names(cluster: Cluster, ns: str, step: str) -> set[str]:
    return {j.metadata.name for j in cluster.jobs(ns) if (j.metadata.labels or {}).get(STEP) == step}


def _refresh(kubectl: Any, ns: str, value: str) -> None:
    kubectl("annotate", "--overwrite", "ftm", "m", f"tuneops.io/refresh={value}", namespace=ns)


def test_a_refresh_reinspects_and_a_new_digest_remerges(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    first_inspect = job_named(cluster, namespace, "inspect", wait_until).metadata.name
    complete(cluster, namespace, first_inspect, ADAPTER_RESULT, wait_until)
    first_merge = job_named(cluster, namespace, "merge", wait_until).metadata.name
    complete(cluster, namespace, first_merge, merge_result(namespace), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until)

    # Same weights: a new inspect Job, the same digest, no new merge.
    _refresh(kubectl, namespace, "1")
    wait_until(
        lambda: len(_names(cluster, namespace, "inspect")) == 2, timeout=30, what="a second inspect Job"
    )
    [second] = _names(cluster, namespace, "inspect") - {first_inspect}
    complete(cluster, namespace, second, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until)
    time.sleep(3)
    assert _names(cluster, namespace, "merge") == {first_merge}

    # New weights: the next refresh finds a new digest, which gives a new merge Job.
    new_weights = copy.deepcopy(ADAPTER_RESULT)
    new_weights["adapter"]["digest"] = "sha256:adapter2"  # type: ignore[index]
    _refresh(kubectl, namespace, "2")
    wait_until(
        lambda: len(_names(cluster, namespace, "inspect")) == 3, timeout=30, what="a third inspect Job"
    )
    [third] = _names(cluster, namespace, "inspect") - {first_inspect, second}
    complete(cluster, namespace, third, new_weights, wait_until)
    wait_until(lambda: len(_names(cluster, namespace, "merge")) == 2, timeout=30, what="a second merge Job")
    [remerge] = _names(cluster, namespace, "merge") - {first_merge}
    complete(cluster, namespace, remerge, merge_result(namespace, "sha256:merged2"), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)
    obj = cluster.get("finetunedmodels", namespace, "m")
    assert obj is not None
    assert obj["status"]["adapterDigest"] == "sha256:adapter2"
    assert obj["status"]["artifact"]["digest"] == "sha256:merged2"
