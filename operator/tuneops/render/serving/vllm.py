"""vLLM serving: a Deployment (or a LeaderWorkerSet across nodes) and the ConfigMap with its startup adapters.

Startup adapters and hot-loading. vLLM only learns adapters at startup from `--lora-modules`, and adapters
loaded at runtime are forgotten when a Pod restarts. The adapter list therefore does not live in the Pod
template: the renderer writes it to a ConfigMap (`lora-modules.json`), mounted into the Pod, and the container
runs a small launcher (`launch.py`, in the same ConfigMap) that reads the file and inserts `--lora-modules`
into vLLM's command line at exactly the place `vllm_args` would put it. With `lora.dynamic` on, adding or
removing an adapter only changes the ConfigMap: running Pods are updated through vLLM's runtime API by the
adapter reconciler, and a Pod that restarts starts with the current list. With `lora.dynamic` off, a hash of
the adapters goes into a Pod template annotation, so a change rolls the Pods. Either way a new model digest
rolls the Pods (annotation `tuneops.io/model-digest`). An adapter on a PVC claim no other input uses adds a
volume, which does change the template.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from typing import Any

from tuneops import labels
from tuneops.adapters.gate import GATE as ADAPTERS_GATE
from tuneops.api.common import fetched_by_loader
from tuneops.api.inferenceservice import InferenceServiceSpec, LoraSpec
from tuneops.config import OperatorConfig
from tuneops.render.env import env_secret, env_value
from tuneops.render.names import bounded_name, canonical_json, content_hash, metadata, selector_labels
from tuneops.render.pod import empty_dir, tmp_volume
from tuneops.render.serving.args import cpu_kv_cache_bytes, lora_args_index, lora_modules, vllm_args
from tuneops.render.serving.loader import add_to_pod, needs_loader
from tuneops.render.serving.pod import (
    ModelFiles,
    api_key_env,
    model_files,
    model_secret,
    pod_metadata,
    server_container,
    server_pod_spec,
    server_resources,
)
from tuneops.render.serving.types import (
    PORT,
    SERVER,
    ServingRender,
    base_served_name,
    effective_lora,
)
from tuneops.render.serving.workload import deployment, rollout, serving_render, workload_metadata
from tuneops.render.types import Manifest, Owner, ResolvedAdapter, ResolvedModel
from tuneops.render.volumes import Mounts, parse
from tuneops.serving.vllm import LoraModule

CACHE_DIR = "/var/cache/tuneops"
CONFIG_DIR = "/etc/tuneops/vllm"
LAUNCH_FILE = "launch.py"
LORA_FILE = "lora-modules.json"
RAY_PORT = 6379
KEY_ENV = "VLLM_API_KEY"
# LeaderWorkerSet labels a group's leader Pod with worker index 0; the Service must reach the leader only.
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"

# Reads the startup adapter list the operator keeps in a ConfigMap, leaves out the adapters vLLM would fail to
# load (so one bad adapter never stops the server) and starts vLLM's OpenAI server with the rest. Runs with the
# image's python3 (standard library only); see tuneops.serving.launcher, whose source is shipped as is.
LAUNCHER = (resources.files("tuneops.serving") / "launcher.py").read_text(encoding="utf-8")

# A multi-node group: the leader starts Ray's head, waits until every worker joined, then starts vLLM.
LEADER_SCRIPT = f"""\
set -eu
ray start --head --port={RAY_PORT} --disable-usage-stats
until python3 -c 'import ray, sys; ray.init(address="auto", logging_level="ERROR"); \
sys.exit(0 if sum(1 for n in ray.nodes() if n["Alive"]) >= int(sys.argv[1]) else 1)' "$LWS_GROUP_SIZE"; do
  sleep 5
done
exec python3 {CONFIG_DIR}/{LAUNCH_FILE} "$@"
"""
WORKER_SCRIPT = f'exec ray start --address="$LWS_LEADER_ADDRESS:{RAY_PORT}" --block --disable-usage-stats'


def _configmap_name(owner: Owner) -> str:
    """`<name>-vllm`, through `bounded_name`: only InferenceServices make ConfigMaps, and `<name>-vllm` (the
    name as written) is one-to-one in the resource's name, so no two services share one."""
    return bounded_name(owner.name, "vllm")


def _configmap(owner: Owner, modules: Sequence[LoraModule], with_lora: bool) -> Manifest:
    data = {LAUNCH_FILE: LAUNCHER}
    if with_lora:
        rows = [json.loads(m.to_arg()) for m in modules]
        data[LORA_FILE] = json.dumps(rows, separators=(",", ":")) + "\n"
    return {
        "apiVersion": "v1",
        "data": dict(sorted(data.items())),
        "kind": "ConfigMap",
        "metadata": metadata(owner, _configmap_name(owner), SERVER),
    }


def _adapters_hash(adapters: Sequence[ResolvedAdapter]) -> str:
    return content_hash([[a.name, a.uri, a.digest] for a in sorted(adapters, key=lambda a: a.name)])


def _env(
    spec: InferenceServiceSpec,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter],
    lora: LoraSpec | None,
    args: Sequence[str],
) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        env_value("DO_NOT_TRACK", "1"),
        env_value("HF_HOME", f"{CACHE_DIR}/huggingface"),
        env_value("HOME", CACHE_DIR),
        env_value("TRITON_CACHE_DIR", f"{CACHE_DIR}/triton"),
        env_value("VLLM_CACHE_ROOT", f"{CACHE_DIR}/vllm"),
        env_value("VLLM_NO_USAGE_STATS", "1"),
        env_value("XDG_CACHE_HOME", f"{CACHE_DIR}/xdg"),
        *api_key_env(spec, KEY_ENV),
    ]
    secret = model_secret(spec, model)
    # vLLM downloads unpinned hf:// adapters itself. Decided from the spec, so that an adapter arriving later
    # (a FineTunedModel's, an attached LoRAAdapter's) does not change the Pod template.
    hub_adapters = any(
        parse(a.uri).scheme == "hf" and not fetched_by_loader(a.uri) for a in adapters
    ) or bool(lora is not None and lora.allowed_adapters is not None)
    if not hub_adapters:
        # Everything is on local disk: never let a missing file turn into a slow download attempt.
        env.append(env_value("HF_HUB_OFFLINE", "1"))
    elif secret is not None:
        env.append(env_secret("HF_TOKEN", secret.name, secret.key))
    if lora is not None:
        env += [
            env_value("TUNEOPS_LORA_ARGS_AT", str(lora_args_index(args))),
            env_value("TUNEOPS_LORA_MODULES_FILE", f"{CONFIG_DIR}/{LORA_FILE}"),
        ]
        if lora.dynamic:
            env.append(env_value("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True"))
    return env


def _volumes(
    owner: Owner, config: OperatorConfig, files: ModelFiles, mounts: Mounts, shared_memory: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and the server's mounts: caches, the launcher ConfigMap, the model, every claim."""
    tmp, tmp_mount = tmp_volume(config)
    volumes: list[dict[str, Any]] = [
        empty_dir("cache", config.scratch.cache),
        tmp,
        {"configMap": {"name": _configmap_name(owner)}, "name": "vllm-config"},
        *files.volumes,
    ]
    volume_mounts: list[dict[str, Any]] = [
        {"mountPath": CACHE_DIR, "name": "cache"},
        tmp_mount,
        {"mountPath": CONFIG_DIR, "name": "vllm-config", "readOnly": True},
        *files.mounts,
    ]
    # NCCL exchanges tensors through /dev/shm, and vLLM's engine talks to its API server through shared-memory
    # queues: the runtime's 64 MB default breaks both.
    shm = config.scratch.shm if shared_memory else config.scratch.engine_shm
    volumes.append(empty_dir("dshm", shm, medium="Memory"))
    volume_mounts.append({"mountPath": "/dev/shm", "name": "dshm"})
    return volumes + mounts.volumes(), volume_mounts + mounts.volume_mounts()


def _annotations(lora: LoraSpec | None, adapters: Sequence[ResolvedAdapter]) -> dict[str, str]:
    if lora is not None and not lora.dynamic:
        return {labels.ADAPTERS_HASH: _adapters_hash(adapters)}
    return {}


def _leaderworkerset(
    spec: InferenceServiceSpec, owner: Owner, template: dict[str, Any], strategy: dict[str, Any]
) -> Manifest:
    """One group of `nodes` Pods per replica: the leader runs vLLM over Ray, the workers only join Ray."""
    leader = json.loads(canonical_json(template))
    leader["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", LEADER_SCRIPT, "vllm-leader"]
    worker = json.loads(canonical_json(template))
    wc = worker["spec"]["containers"][0]
    for key in ("args", "livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle"):
        wc.pop(key, None)
    wc["command"] = ["/bin/sh", "-c", WORKER_SCRIPT]
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": workload_metadata(spec, owner),
        "spec": {
            "leaderWorkerTemplate": {
                "leaderTemplate": leader,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "size": spec.vllm_settings().nodes,
                "workerTemplate": worker,
            },
            "replicas": spec.replicas,
            "rolloutStrategy": {"rollingUpdateConfiguration": strategy, "type": "RollingUpdate"},
            "startupPolicy": "LeaderCreated",
        },
    }


def _model_and_mounts(
    spec: InferenceServiceSpec,
    config: OperatorConfig,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter],
    adapter_sources: Sequence[str],
) -> tuple[ModelFiles, Mounts]:
    mounts = Mounts(config)
    files = model_files(spec, model, config, mounts, uri=model.uri)
    for a in adapters:
        mounts.add(a.uri)
    # Claims adapters may come from later are mounted now: a volume cannot be added to a running Pod, so
    # an adapter on a new claim would otherwise restart the Pods that hot-loading exists to keep.
    for uri in adapter_sources:
        mounts.add(uri)
    return files, mounts


def _pod_template(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter],
    adapter_sources: Sequence[str],
) -> dict[str, Any]:
    v = spec.vllm_settings()
    lora = effective_lora(spec, adapters)
    multinode = v.nodes > 1
    files, mounts = _model_and_mounts(spec, config, model, adapters, adapter_sources if lora else ())
    args = vllm_args(
        model_path=files.path,
        served_name=base_served_name(spec, owner, model),
        vllm=v,
        lora=lora,
        port=PORT,
        distributed_executor_backend="ray" if multinode else None,
        kv_cache_bytes=cpu_kv_cache_bytes(spec.resources.memory) if spec.gpus_per_pod() == 0 else None,
    )
    per_pod_parallel = v.tensor_parallel_size * (1 if multinode else v.pipeline_parallel_size)
    volumes, volume_mounts = _volumes(owner, config, files, mounts, shared_memory=per_pod_parallel > 1)
    container = server_container(
        spec,
        image=spec.image or config.images.vllm,
        args=args,
        env=_env(spec, model, adapters, lora, args),
        resources=server_resources(spec, config, spec.gpus_per_pod(), cpu_default=False),
        volume_mounts=volume_mounts,
        startup_seconds=v.startup_timeout_seconds,
    )
    container["command"] = ["python3", f"{CONFIG_DIR}/{LAUNCH_FILE}"]
    # vLLM drains requests for up to its shutdown timeout, then needs a moment to exit.
    shutdown = v.shutdown_timeout_seconds + 15
    pod = server_pod_spec(
        spec,
        config,
        container,
        volumes=volumes,
        files=files,
        gpus=spec.gpus_per_pod(),
        shutdown_seconds=shutdown,
    )
    if needs_loader(spec) and not multinode:
        add_to_pod(pod, spec, config, adapters)
    if lora is not None and lora.dynamic and not multinode:
        # Ready (traffic from the Service and the InferencePool) only once the server lists every adapter it
        # should serve: the operator sets this condition (tuneops.adapters.gate)
        pod["readinessGates"] = [{"conditionType": ADAPTERS_GATE}]
    return {"metadata": pod_metadata(spec, owner, model, _annotations(lora, adapters)), "spec": pod}


def render_vllm(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter],
    adapter_sources: Sequence[str] = (),
) -> ServingRender:
    v = spec.vllm_settings()
    lora = effective_lora(spec, adapters)
    multinode = v.nodes > 1
    template = _pod_template(spec, owner, config, model, adapters, adapter_sources)
    strategy, note = rollout(spec, config, spec.gpus_per_pod())
    modules = (
        lora_modules(spec, owner, config, adapters, base_served_name(spec, owner, model)) if lora else []
    )
    workload = (
        _leaderworkerset(spec, owner, template, strategy)
        if multinode
        else deployment(spec, owner, template, strategy, v.startup_timeout_seconds)
    )
    return serving_render(
        spec,
        owner,
        config,
        manifests=[_configmap(owner, modules, lora is not None)],
        workload=workload,
        note=note,
        served_models=(base_served_name(spec, owner, model), *(a.name for a in adapters)),
        service_selector=_service_selector(owner) if multinode else None,
        key_env=KEY_ENV,
        runtime_api=lora is not None and lora.dynamic,
        multinode=multinode,
    )


def _service_selector(owner: Owner) -> dict[str, str]:
    return {**selector_labels(owner, SERVER), LWS_WORKER_INDEX: "0"}
