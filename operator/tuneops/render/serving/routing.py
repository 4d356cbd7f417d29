"""Routing through a Gateway: an InferencePool over the server Pods and an HTTPRoute from the Gateway to it.

Only kinds the Gateway API Inference Extension still publishes are rendered (its v1 InferencePool); the endpoint
picker is the user's (e.g. llm-d's inference scheduler), named by spec.routing.endpointPicker or, when the spec
names none, by the operator config's routing.endpointPicker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tuneops.api.inferenceservice import EndpointPicker, InferenceServiceSpec, Routing
from tuneops.config import OperatorConfig
from tuneops.render.names import metadata
from tuneops.render.serving.types import PORT, SERVER, workload_name
from tuneops.render.types import Manifest, Owner, RenderError

POOL_GROUP = "inference.networking.k8s.io"
GATEWAY_GROUP = "gateway.networking.k8s.io"


def endpoint_picker(routing: Routing, config: OperatorConfig) -> EndpointPicker | None:
    """The spec's picker, else the operator config's default (None: neither names one; checks.check_routing
    refuses such a spec)."""
    return routing.endpoint_picker or config.routing.endpoint_picker


def inference_pool(owner: Owner, picker: EndpointPicker, selector: Mapping[str, str]) -> Manifest:
    return {
        "apiVersion": f"{POOL_GROUP}/v1",
        "kind": "InferencePool",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {
            # vLLM's and llama.cpp's OpenAI servers speak HTTP/1.1 (the default, said so that a picker or a
            # gateway that reads it does not guess)
            "appProtocol": "http",
            "endpointPickerRef": {
                "failureMode": picker.failure_mode,
                "kind": "Service",
                "name": picker.name,
                "port": {"number": picker.port},
            },
            "selector": {"matchLabels": dict(sorted(selector.items()))},
            "targetPorts": [{"number": PORT}],
        },
    }


def http_route(owner: Owner, routing: Routing) -> Manifest:
    gateway = routing.gateway
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    spec: dict[str, Any] = {
        "parentRefs": [parent],
        "rules": [
            {
                "backendRefs": [{"group": POOL_GROUP, "kind": "InferencePool", "name": workload_name(owner)}],
                "matches": [{"path": {"type": "PathPrefix", "value": routing.path}}],
            }
        ],
    }
    if routing.hostnames:
        spec["hostnames"] = list(routing.hostnames)
    return {
        "apiVersion": f"{GATEWAY_GROUP}/v1",
        "kind": "HTTPRoute",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": spec,
    }


def render_routing(
    spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, selector: Mapping[str, str]
) -> list[Manifest]:
    """The pool and its route when spec.routing asks for them; none otherwise."""
    if spec.routing is None:
        return []
    picker = endpoint_picker(spec.routing, config)
    if picker is None:
        raise RenderError(
            "spec.routing.endpointPicker: no endpoint picker in the spec or the operator config"
        )
    return [inference_pool(owner, picker, selector), http_route(owner, spec.routing)]
