"""Prometheus metrics of the operator, on their own port."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Sequence

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
_BENCH_LABELS = ["resource_namespace", "name", "variant", "concurrency"]
BENCHMARK_THROUGHPUT = Gauge(
    "tuneops_benchmark_output_tokens_per_second",
    "Output tokens/s a FineTunedModel's benchmark measured, by variant (merged, lora) and concurrency.",
    _BENCH_LABELS,
    registry=REGISTRY,
)
BENCHMARK_TTFT_P50 = Gauge(
    "tuneops_benchmark_ttft_p50_seconds",
    "Median time to first token a FineTunedModel's benchmark measured, by variant and concurrency.",
    _BENCH_LABELS,
    registry=REGISTRY,
)
BENCHMARK_ITL_P50 = Gauge(
    "tuneops_benchmark_itl_p50_seconds",
    "Median inter-token latency a FineTunedModel's benchmark measured, by variant and concurrency.",
    _BENCH_LABELS,
    registry=REGISTRY,
)
BENCHMARK_COST = Gauge(
    "tuneops_benchmark_accelerator_seconds_per_1k_tokens",
    "GPU-seconds (CPU-seconds without GPUs) per 1,000 output tokens, by variant and concurrency.",
    _BENCH_LABELS,
    registry=REGISTRY,
)
BENCHMARK_LORA_RATIO = Gauge(
    "tuneops_benchmark_lora_throughput_ratio",
    "LoRA output tokens/s over the merged model's at the highest concurrency measured.",
    ["resource_namespace", "name"],
    registry=REGISTRY,
)
_benchmark_series: dict[tuple[str, str], set[tuple[str, str]]] = {}


def set_benchmark(namespace: str, name: str, figures: Sequence[tuple[str, int, float, float, float, float]],
                  ratio: float | None) -> None:  # fmt: skip
    """One FineTunedModel's benchmark series, replacing what it had: (variant, concurrency, tokens/s, TTFT p50
    s, ITL p50 s, cost per 1k tokens) per row."""
    forget_benchmark(namespace, name)
    seen: set[tuple[str, str]] = set()
    for variant, concurrency, tps, ttft, itl, cost in figures:
        key = (variant, str(concurrency))
        seen.add(key)
        BENCHMARK_THROUGHPUT.labels(namespace, name, *key).set(tps)
        BENCHMARK_TTFT_P50.labels(namespace, name, *key).set(ttft)
        BENCHMARK_ITL_P50.labels(namespace, name, *key).set(itl)
        BENCHMARK_COST.labels(namespace, name, *key).set(cost)
    _benchmark_series[(namespace, name)] = seen
    if ratio is not None:
        BENCHMARK_LORA_RATIO.labels(namespace, name).set(ratio)


def forget_benchmark(namespace: str, name: str) -> None:
    """Remove one FineTunedModel's benchmark series (deleted, or no benchmark any more)."""
    for key in _benchmark_series.pop((namespace, name), set()):
        for gauge in (BENCHMARK_THROUGHPUT, BENCHMARK_TTFT_P50, BENCHMARK_ITL_P50, BENCHMARK_COST):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name, *key)
    with contextlib.suppress(KeyError):
        BENCHMARK_LORA_RATIO.remove(namespace, name)


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
