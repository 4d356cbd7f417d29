"""A FineTunedModel's benchmark against a real API server: the Job after the merge, figures and the recommendation
in status, a printer column and metrics; a failed serving-level check takes Ready away."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.integration.helpers import ADAPTER_RESULT, complete, ftm, job_named, merge_result, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess


def _figures(lora_tps: float) -> list[dict[str, Any]]:
    row = {"ttftP50Ms": 40.0, "ttftP95Ms": 60.0, "itlP50Ms": 9.0, "acceleratorSPerThousandTokens": 1.5}
    return [
        {"variant": "merged", "concurrency": 1, "outputTokensPerS": 100.0, **row},
        {"variant": "merged", "concurrency": 8, "outputTokensPerS": 400.0, **row},
        {"variant": "lora", "concurrency": 1, "outputTokensPerS": 80.0, **row},
        {"variant": "lora", "concurrency": 8, "outputTokensPerS": lora_tps, **row},
    ]


def _benchmarked(namespace: str, cluster: Cluster, kubectl: Any, wait_until: Callable[..., Any]) -> Any:
    obj = ftm("m")
    obj["spec"]["benchmark"] = {"enabled": True, "concurrency": [1, 8], "inputLen": 64, "outputLen": 32}
    kubectl.apply(obj, namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)
    return job_named(cluster, namespace, "benchmark", wait_until)


def test_the_benchmark_runs_after_the_merge_and_recommends_in_status(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    bench = _benchmarked(namespace, cluster, kubectl, wait_until)
    pod = bench.spec.template.spec
    assert pod.containers[0].command == ["python3", "-m", "tuneops.workers.cli"]
    assert pod.containers[0].args[0] == "compare"
    assert f"pvc://artifacts/{namespace}/m" in pod.containers[0].args  # the merged model the merge recorded
    assert [c.name for c in pod.init_containers] == ["code"]
    # The merged model is Ready while the benchmark runs.
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)
    cond = {c["type"]: c for c in cluster.get("finetunedmodels", namespace, "m")["status"]["conditions"]}  # type: ignore[index]
    assert cond["Benchmarked"]["status"] == "Unknown", cond

    reason = "merge: LoRA costs 25% throughput at concurrency 8 for this adapter"
    complete(cluster, namespace, bench.metadata.name, {"benchmark": {
        "figures": _figures(300.0), "recommendation": "merged", "reason": reason, "loraThroughputRatio": 0.75,
        "qualityGap": 0.02, "accelerator": "cpu"}, "passed": True}, wait_until)  # fmt: skip

    def benchmarked() -> Any:
        status = (cluster.get("finetunedmodels", namespace, "m") or {}).get("status") or {}
        conds = {c["type"]: c for c in status.get("conditions") or []}
        return status if conds.get("Benchmarked", {}).get("status") == "True" else None

    status = wait_until(benchmarked, timeout=40, what="Benchmarked=True")
    got = status["benchmark"]
    assert got["recommendation"] == "merged" and got["reason"] == reason and got["job"] == bench.metadata.name
    assert got["loraThroughputRatio"] == 0.75 and len(got["figures"]) == 4
    assert {c["type"]: c["message"] for c in status["conditions"]}["Benchmarked"] == reason
    assert cluster.ready("finetunedmodels", namespace, "m")["status"] == "True"  # type: ignore[index]
    out = kubectl("get", "ftm", "m", "-o", "wide", namespace=namespace).stdout
    assert "merged" in out and "0.75" in out, out

    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert (f'tuneops_benchmark_output_tokens_per_second{{concurrency="8",name="m",resource_namespace='
            f'"{namespace}",variant="lora"}} 300.0') in text  # fmt: skip
    assert (
        f'tuneops_benchmark_lora_throughput_ratio{{name="m",resource_namespace="{namespace}"}} 0.75' in text
    )

    # Turning it off forgets the figures and the condition.
    cluster.patch_spec("finetunedmodels", namespace, "m", {"benchmark": {"enabled": False}})
    wait_until(lambda: "benchmark" not in (cluster.get("finetunedmodels", namespace, "m") or {})["status"],
               timeout=40, what="status.benchmark gone")  # fmt: skip


def test_a_failed_serving_level_check_takes_ready_away(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    bench = _benchmarked(namespace, cluster, kubectl, wait_until)
    why = (
        "the LoRA path and the merged model answer differently (largest log-probability gap 1.900, limit 0.1)"
    )
    result = {"benchmark": {"figures": _figures(300.0), "recommendation": "merged", "reason": why,
                            "qualityGap": 1.9, "accelerator": "cpu"}, "passed": False}  # fmt: skip
    # backoffLimit 1: the Job controller retries once, then marks the Job Failed.
    for _ in range(2):
        wait_until(lambda: cluster.finish_pod(namespace, bench.metadata.name, result, 3),
                   timeout=30, what="a benchmark Pod")  # fmt: skip
    wait_ready(
        cluster, "finetunedmodels", namespace, "m", wait_until, ("False", "QualityCheckFailed"), timeout=40
    )
    msg = cluster.ready("finetunedmodels", namespace, "m")["message"]  # type: ignore[index]
    assert "1.900" in msg and "merge.method" in msg, msg
    status = cluster.get("finetunedmodels", namespace, "m")["status"]  # type: ignore[index]
    assert status["benchmark"]["qualityGap"] == 1.9 and status["phase"] == "Failed"


def _service(serve: str) -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": {"model": {"fineTunedModelRef": {"name": "m"}, "serve": serve},
                 "resources": {"gpus": 0, "cpu": 1, "memory": "2Gi"}},
    }  # fmt: skip


def _server_args(cluster: Cluster, namespace: str) -> list[str]:
    dep = cluster.apps.read_namespaced_deployment("chat", namespace)
    return list(dep.spec.template.spec.containers[0].args)


def test_serve_auto_follows_the_recommendation_under_one_name(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    bench = _benchmarked(namespace, cluster, kubectl, wait_until)
    kubectl.apply(_service("auto"), namespace=namespace)

    def form() -> Any:
        return ((cluster.get("inferenceservices", namespace, "chat") or {}).get("status") or {}).get("form")

    # Nothing measured yet: the merged model, and the status says why.
    got = wait_until(form, timeout=40, what="status.form")
    assert got["serve"] == "merged" and "benchmark has not finished" in got["reason"], got
    args = wait_until(lambda: _server_args(cluster, namespace), timeout=40, what="the Deployment")
    assert f"/artifacts/{namespace}/m" in " ".join(args) and "--enable-lora" not in args

    reason = "serve as LoRA: it is within 2% of the merged throughput at concurrency 8"
    complete(cluster, namespace, bench.metadata.name, {"benchmark": {
        "figures": _figures(392.0), "recommendation": "lora", "reason": reason, "loraThroughputRatio": 0.98,
        "qualityGap": 0.01, "accelerator": "cpu"}, "passed": True}, wait_until)  # fmt: skip
    got = wait_until(
        lambda: (f := form()) and f["serve"] == "lora" and f, timeout=40, what="status.form lora"
    )
    assert reason in got["reason"]
    args = wait_until(lambda: (a := _server_args(cluster, namespace)) and "--enable-lora" in a and a,
                      timeout=40, what="the Deployment in the LoRA form")  # fmt: skip
    # The adapter takes the service's name; the base steps aside: clients keep asking for "chat".
    assert args[args.index("--served-model-name") + 1] == "chat-base"
    # the startup adapters reach vLLM through the service's ConfigMap (the launcher adds --lora-modules)
    data = cluster.core.read_namespaced_config_map("chat-vllm", namespace).data
    modules = json.loads(data["lora-modules.json"])
    assert [(m["name"], m["base_model_name"]) for m in modules] == [("chat", "chat-base")], modules
    out = kubectl("get", "tisvc", "chat", "-o", "wide", namespace=namespace).stdout
    assert "lora" in out, out


def test_serve_merged_of_an_unmerged_model_is_refused(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m", merge=False), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)
    kubectl.apply(_service("merged"), namespace=namespace)
    wait_ready(
        cluster, "inferenceservices", namespace, "chat", wait_until, ("False", "InvalidSpec"), timeout=40
    )
    assert "merge.enabled false" in cluster.ready("inferenceservices", namespace, "chat")["message"]  # type: ignore[index]


def test_the_benchmark_waits_for_its_service_and_takes_its_hardware(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    obj = ftm("m")
    obj["spec"]["benchmark"] = {"enabled": True, "serviceRef": {"name": "chat"}}
    kubectl.apply(obj, namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)

    def benchmarked() -> Any:
        status = (cluster.get("finetunedmodels", namespace, "m") or {}).get("status") or {}
        return {c["type"]: c for c in status.get("conditions") or []}.get("Benchmarked")

    cond = wait_until(benchmarked, timeout=40, what="the Benchmarked condition")
    assert (cond["status"], cond["reason"]) == ("Unknown", "WaitingForSource") and "chat" in cond[
        "message"
    ], cond
    assert cluster.ready("finetunedmodels", namespace, "m")["status"] == "True"  # type: ignore[index]
    # The service appearing wakes the model (a watched reference): the Job runs on its hardware.
    service = _service("auto")
    service["spec"]["resources"] = {"gpus": 0, "cpu": 3, "memory": "5Gi"}
    service["spec"]["nodeSelector"] = {"pool": "serving"}
    kubectl.apply(service, namespace=namespace)
    bench = job_named(cluster, namespace, "benchmark", wait_until)
    pod = bench.spec.template.spec
    assert (
        pod.containers[0].resources.requests["cpu"] == "3"
        and pod.containers[0].resources.limits["memory"] == "5Gi"
    )
    assert pod.node_selector == {"pool": "serving"}
