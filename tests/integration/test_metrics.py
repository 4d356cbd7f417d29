"""/metrics of a running operator: the documented series exist and move as resources reconcile."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import ADAPTER_RESULT, complete, ftm, job_named, merge_result
from tests.integration.operator_bed import Cluster, OperatorProcess
from tuneops import __version__, metrics

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "charts" / "tuneops" / "dashboards" / "tuneops-operator.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(op: OperatorProcess) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    want = set(labels.items())
    return [dict(ls) for (n, ls), _ in samples.items() if n == name and want <= ls]


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(tuneops_[a-z0-9_]+)`", DOCS.read_text(), flags=re.M))


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    registered = {m.name for m in metrics.REGISTRY.collect()}
    # prometheus_client names a counter's family without its _total suffix.
    exposed = {f"{n}_total" if n + "_total" in documented_metrics() else n for n in registered}
    assert exposed == documented_metrics()


def registered_labels() -> dict[str, set[str]]:
    """Label names of each operator series, by the name it is exposed under."""
    out = {}
    for metric in vars(metrics).values():
        if isinstance(metric, MetricWrapperBase):
            family = next(iter(metric.describe()))
            name = family.name + ("_total" if family.type == "counter" else "")
            out[name] = set(metric._labelnames)
    return out


def documented_labels() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `(tuneops_[a-z0-9_]+)` \| \w+ \| ([^|]*) \|", DOCS.read_text(), flags=re.M)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, labels in rows}


def test_labels_are_documented_and_none_is_a_prometheus_target_label() -> None:
    assert registered_labels() == documented_labels()
    for name, labels in registered_labels().items():
        assert not labels & metrics.TARGET_LABELS, f"{name} would lose {labels & metrics.TARGET_LABELS}"


def test_dashboard_and_docs_group_operator_series_by_their_own_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += re.findall(r"^(?:  expr: )?(.*tuneops_.*)$", DOCS.read_text(), flags=re.M)
    labels = registered_labels()
    checked = 0
    for expr in exprs:
        used = [n for n in labels if re.search(rf"\b{n}(_bucket)?\b", expr)]
        if not used:
            continue
        allowed = set.union(*(labels[n] for n in used)) | {"le", "job"}
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            grouped = {g.strip() for g in group.split(",")}
            assert grouped <= allowed, f"{expr}: {grouped - allowed} is not a label of {used}"
            checked += 1
    assert checked >= 8


def test_metrics_follow_a_finetunedmodel_through_its_steps(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    text, before = scrape(operator)
    for name in documented_metrics():
        assert f"# TYPE {name} " in text, f"{name} is not exposed"
    assert value(before, "tuneops_build_info", version=__version__) == 1
    kind = "FineTunedModel"
    progressing0 = value(before, "tuneops_reconcile_total", kind=kind, result="progressing")
    ready0 = value(before, "tuneops_reconcile_total", kind=kind, result="ready")
    count0 = value(before, "tuneops_reconcile_duration_seconds_count", kind=kind)

    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)

    def pending() -> Samples | None:
        _, now = scrape(operator)
        found = series(now, "tuneops_resources", kind=kind, resource_namespace=namespace)
        return now if [(s["ready"], s["reason"]) for s in found] in ([("False", "JobPending")],
                                                                      [("False", "JobRunning")]) else None  # fmt: skip

    during = wait_until(pending, what="tuneops_resources to show the resource as pending")
    assert value(during, "tuneops_resources", kind=kind, resource_namespace=namespace) == 1
    assert value(during, "tuneops_reconcile_total", kind=kind, result="progressing") > progressing0
    assert value(during, "tuneops_reconcile_duration_seconds_count", kind=kind) > count0
    assert value(during, "tuneops_reconcile_duration_seconds_sum", kind=kind) > 0
    assert value(during, "tuneops_reconcile_duration_seconds_bucket", kind=kind, le="+Inf") == value(
        during, "tuneops_reconcile_duration_seconds_count", kind=kind
    )

    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)

    def ready() -> Samples | None:
        _, now = scrape(operator)
        found = series(now, "tuneops_resources", kind=kind, resource_namespace=namespace)
        return now if [(s["ready"], s["reason"]) for s in found] == [("True", "Succeeded")] else None

    after = wait_until(ready, timeout=40, what="tuneops_resources to show the resource Ready")
    assert value(after, "tuneops_reconcile_total", kind=kind, result="ready") > ready0
    assert value(after, "tuneops_reconcile_duration_seconds_count", kind=kind) > value(
        during, "tuneops_reconcile_duration_seconds_count", kind=kind
    )

    kubectl("delete", "finetunedmodel", "m", namespace=namespace)
    wait_until(
        lambda: not series(scrape(operator)[1], "tuneops_resources", kind=kind, resource_namespace=namespace),
        what="the deleted resource to leave tuneops_resources",
    )


def test_an_invalid_resource_counts_as_invalid(
    operator: OperatorProcess, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kind = "QuantizationJob"
    _, before = scrape(operator)
    invalid0 = value(before, "tuneops_reconcile_total", kind=kind, result="invalid")
    obj = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "q"},
        # Passes the schema, refused by the operator: a reference into another namespace is off by default.
        "spec": {"source": {"fineTunedModelRef": {"name": "m", "namespace": "elsewhere"}}, "method": "gguf",
                 "gguf": {"quantTypes": ["Q4_K_M"]}},
    }  # fmt: skip
    kubectl.apply(obj, namespace=namespace)

    def invalid() -> Samples | None:
        _, now = scrape(operator)
        found = series(now, "tuneops_resources", kind=kind, resource_namespace=namespace)
        return now if [(s["ready"], s["reason"]) for s in found] == [("False", "InvalidSpec")] else None

    now = wait_until(invalid, what="tuneops_resources to show InvalidSpec")
    assert value(now, "tuneops_reconcile_total", kind=kind, result="invalid") > invalid0
