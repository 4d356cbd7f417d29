"""Secret values never leave their Secrets: a pipeline runs with random tokens and everything written is scanned.

Status, Events, Jobs, Pods, Deployments, Services and ConfigMaps are read back from the API server, and the
operator's log is read from disk; neither the token nor its base64 form may appear anywhere but the Secret.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.integration.helpers import ADAPTER_RESULT, complete, job_named, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess, mark_pods_ready
from tests.unit.render_support import SECRET_ENV, assert_restricted

API = "tuneops.io/v1alpha1"
KINDS_TO_SCAN = ["jobs", "pods", "deployments", "services", "configmaps", "events",
                 "finetunedmodels", "quantizationjobs", "inferenceservices"]  # fmt: skip


def secret(name: str, key: str, value: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "stringData": {key: value}}  # fmt: skip


def test_tokens_and_api_keys_never_appear_in_what_the_operator_writes(
    start_operator: Callable[..., OperatorProcess], cluster: Cluster, kubectl: Any, namespace: str,
    wait_until: Callable[..., Any],
) -> None:  # fmt: skip
    token = "hf_" + secrets.token_urlsafe(24)
    api_key = "sk-" + secrets.token_urlsafe(24)
    op = start_operator(TUNEOPS_LOG_LEVEL="DEBUG")
    kubectl.apply(
        [
            secret("hf-cred", "token", token),
            secret("api-cred", "key", api_key),
            {"apiVersion": API, "kind": "FineTunedModel", "metadata": {"name": "m"},
             "spec": {"baseModel": {"uri": "hf://org/base", "tokenSecretRef": {"name": "hf-cred"}},
                      "adapter": {"uri": "hf://org/adapter", "tokenSecretRef": {"name": "hf-cred"}},
                      "merge": {"enabled": False}}},
            {"apiVersion": API, "kind": "InferenceService", "metadata": {"name": "svc"},
             "spec": {"model": {"uri": "hf://org/base", "tokenSecretRef": {"name": "hf-cred"}},
                      "apiKeySecretRef": {"name": "api-cred", "key": "key"},
                      "lora": {"adapters": [{"name": "chat", "fineTunedModelRef": {"name": "m"}}]}}},
        ],
        namespace=namespace,
    )  # fmt: skip
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40, what="m Ready")
    wait_until(lambda: cluster.apps.list_namespaced_deployment(namespace).items, what="the Deployment")
    # The serving Pods become Ready: the operator now calls them with the API key (they are unreachable).
    deployment = cluster.apps.list_namespaced_deployment(namespace).items[0]
    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    wait_until(lambda: cluster.core.list_namespaced_pod(namespace, label_selector=selector).items,
               what="a serving Pod")  # fmt: skip
    mark_pods_ready(cluster, namespace, selector)
    wait_until(
        lambda: any(c["type"] == "AdaptersReady" for c in
                    (cluster.get("inferenceservices", namespace, "svc") or {}).get("status", {}).get("conditions", [])),
        timeout=40, what="the adapter pass against the Pods",
    )  # fmt: skip

    # Everything written, as the API server holds it.
    blobs: dict[str, str] = {}
    for kind in KINDS_TO_SCAN:
        blobs[kind] = kubectl("get", kind, "-o", "json", namespace=namespace).stdout
    blobs["operator log"] = op.log_path.read_text(errors="replace")
    encoded = base64.b64encode(token.encode()).decode()
    encoded_key = base64.b64encode(api_key.encode()).decode()
    for where, text in blobs.items():
        for value in (token, api_key, encoded, encoded_key):
            assert value not in text, f"a secret value appears in {where}"

    # Pod templates (and the Pods made from them) are restricted; secrets come in as env valueFrom only.
    templates = [*json.loads(blobs["jobs"])["items"], *json.loads(blobs["deployments"])["items"]]
    assert templates
    assert_restricted(templates)
    wired = set()
    for obj in templates:
        for c in obj["spec"]["template"]["spec"]["containers"] + obj["spec"]["template"]["spec"].get(
            "initContainers", []
        ):
            assert not any(token in a or api_key in a for a in c.get("args", []) + c.get("command", []))
            for e in c.get("env", []):
                # Worker credentials are per source: TUNEOPS_<ROLE>_HF_TOKEN and the like.
                if e["name"] in SECRET_ENV or any(e["name"].endswith("_" + n) for n in SECRET_ENV):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], e
                    wired.add((e["name"], e["valueFrom"]["secretKeyRef"]["name"]))
    assert ("TUNEOPS_BASE_HF_TOKEN", "hf-cred") in wired and ("VLLM_API_KEY", "api-cred") in wired, wired
    assert ("TUNEOPS_ADAPTER_HF_TOKEN", "hf-cred") in wired, wired
    for pod in json.loads(blobs["pods"])["items"]:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_cross_namespace_references_follow_the_operator_config(
    start_operator: Callable[..., OperatorProcess], cluster: Cluster, kubectl: Any, namespace: str,
    wait_until: Callable[..., Any], tmp_path: Path,
) -> None:  # fmt: skip
    q = {"apiVersion": API, "kind": "QuantizationJob", "metadata": {"name": "q"},
         "spec": {"source": {"fineTunedModelRef": {"name": "m", "namespace": "default"}}, "method": "gguf"}}  # fmt: skip
    kubectl.apply(q, namespace=namespace)
    op = start_operator()
    wait_ready(
        cluster, "quantizationjobs", namespace, "q", wait_until, ("False", "InvalidSpec"), what="refused"
    )
    assert "cross-namespace" in cluster.ready("quantizationjobs", namespace, "q")["message"]  # type: ignore[index]
    op.stop()

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"allow_cross_namespace_refs": True}))
    start_operator(TUNEOPS_CONFIG=str(config))
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, ("False", "WaitingForSource"),
               what="allowed: now it waits for default/m")  # fmt: skip
    assert "default/m" in cluster.ready("quantizationjobs", namespace, "q")["message"]  # type: ignore[index]
