"""The autoscaler of an InferenceService: a KEDA ScaledObject or a HorizontalPodAutoscaler on vLLM's load metrics.

Both scale the InferenceService itself through its scale subresource, never its Deployment: the autoscaler owns
`spec.replicas` of the InferenceService and the operator carries that count to the workload, so the operator's
apply of the Deployment and the autoscaler never write the same field.
"""

from __future__ import annotations

from tuneops.api.inferenceservice import Autoscaling, InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.names import metadata
from tuneops.render.serving.types import SERVER, served_model_name, workload_name
from tuneops.render.types import Manifest, Owner

# spec.autoscaling.metric -> the metric vLLM exports on /metrics (names of the vLLM version served; the
# serving tests read them off a real server). vllm:gpu_cache_usage_perc is gone: KV-cache use is this one.
VLLM_METRICS = {
    "requestsWaiting": "vllm:num_requests_waiting",
    "requestsRunning": "vllm:num_requests_running",
    "kvCacheUsage": "vllm:kv_cache_usage_perc",
}


def adapter_metric(vllm_metric: str) -> str:
    """The name a Prometheus adapter serves a vLLM metric under (custom.metrics.k8s.io): ':' becomes '_'."""
    return vllm_metric.replace(":", "_")


def quantity(value: float) -> str:
    """A per-replica target as a Kubernetes quantity: whole numbers plain, fractions in milli-units."""
    milli = round(value * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def number(value: float) -> str:
    """A KEDA threshold (a string holding a decimal number)."""
    return f"{value:g}"


def bounds(auto: Autoscaling) -> str:
    """status.autoscaler: the engine and its replica bounds."""
    return f"{auto.engine} {auto.min_replicas}-{auto.max_replicas}"


def _target(owner: Owner) -> dict[str, str]:
    return {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name}


def prometheus_query(
    spec: InferenceServiceSpec, owner: Owner, auto: Autoscaling, base: str | None = None
) -> str:
    """The service's total of the metric: vLLM labels every series with the served base model's name (requests
    for its adapters included)."""
    name = base or served_model_name(spec, owner)
    return f'sum({VLLM_METRICS[auto.metric]}{{namespace="{owner.namespace}",model_name="{name}"}})'


def scaled_object(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    auto: Autoscaling,
    base: str | None = None,
) -> Manifest:
    """KEDA turns the query's total into a per-replica average (metricType AverageValue) against the target."""
    trigger_meta = {
        "query": prometheus_query(spec, owner, auto, base),
        "serverAddress": config.prometheus_address,
        "threshold": number(auto.target_value),
    }
    if auto.activation_value is not None:
        trigger_meta["activationThreshold"] = number(auto.activation_value)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {
            "advanced": {
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {"stabilizationWindowSeconds": auto.scale_down_stabilization_seconds}
                    }
                }
            },
            # cooldownPeriod is KEDA's own wait before the last replica goes (scale to zero).
            "cooldownPeriod": auto.scale_down_stabilization_seconds,
            "maxReplicaCount": auto.max_replicas,
            "minReplicaCount": auto.min_replicas,
            "scaleTargetRef": _target(owner),
            "triggers": [{"metadata": trigger_meta, "metricType": "AverageValue", "type": "prometheus"}],
        },
    }


def hpa(owner: Owner, config: OperatorConfig, auto: Autoscaling) -> Manifest:
    """A Pods metric: the HPA controller reads it per Pod of status.selector through the adapter."""
    # autoscaling/v2 arrived in Kubernetes 1.23; the operator discovers the server version at startup.
    return {
        "apiVersion": "autoscaling/v2" if config.features.hpa_v2 else "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": auto.scale_down_stabilization_seconds}},
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "pods": {
                        "metric": {"name": adapter_metric(VLLM_METRICS[auto.metric])},
                        "target": {"averageValue": quantity(auto.target_value), "type": "AverageValue"},
                    },
                    "type": "Pods",
                }
            ],
            "minReplicas": auto.min_replicas,
            "scaleTargetRef": _target(owner),
        },
    }


def render_autoscaler(
    spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, base: str | None = None
) -> list[Manifest]:
    """The autoscaler spec.autoscaling asks for; none when it is off (`base`: the base's served name)."""
    auto = spec.autoscaling
    if auto is None:
        return []
    if auto.engine == "keda":
        return [scaled_object(spec, owner, config, auto, base)]
    return [hpa(owner, config, auto)]
