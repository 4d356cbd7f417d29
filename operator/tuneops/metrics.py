"""Prometheus metrics of the operator, on their own port."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tuneops import __version__

REGISTRY = CollectorRegistry(auto_describe=True)

# A resource's namespace is `resource_namespace`: Prometheus sets `namespace` (and job, instance, pod, service)
# on every series from the scraped target, and would rename ours to `exported_namespace` unless honorLabels.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "container", "endpoint"})

RECONCILE_TOTAL = Counter(
    "tuneops_reconcile_total",
    "Reconciles by kind and result (ready, progressing, waiting, invalid, failed, error).",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "tuneops_reconcile_errors_total",
    "Reconciles that raised an unexpected error (retried with backoff).",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "tuneops_reconcile_duration_seconds",
    "Time spent in one reconcile.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RESOURCES = Gauge(
    "tuneops_resources",
    "Resources by kind, namespace and Ready condition (True, False, Unknown) with its reason.",
    ["kind", "resource_namespace", "ready", "reason"],
    registry=REGISTRY,
)
ADAPTERS_SERVED = Gauge(
    "tuneops_adapters_served",
    "LoRA adapters served per InferenceService, by state.",
    ["resource_namespace", "name", "state"],
    registry=REGISTRY,
)
API_RETRIES = Counter(
    "tuneops_api_retries_total",
    "API requests retried after a transient failure, by cause (409, 429, 5xx code, or timeout/connection).",
    ["cause"],
    registry=REGISTRY,
)
API_GIVEUPS = Counter(
    "tuneops_api_giveups_total",
    "API requests that still failed when their retry budget ran out (the reconcile is retried later).",
    ["cause"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "tuneops_workqueue_depth",
    "Resources waiting in the work queue (due now or later).",
    registry=REGISTRY,
)
WAKEUPS = Counter(
    "tuneops_wakeups_total",
    "Reconciles queued because something changed, by what changed (spec, child, source, adapters, resync).",
    ["cause"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "tuneops_build_info",
    "Build information (always 1).",
    ["version", "python"],
    registry=REGISTRY,
)
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on `port` (0 disables)."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
