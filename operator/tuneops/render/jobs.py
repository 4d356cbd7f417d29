"""Worker Jobs: one step's command, inputs and output in, a complete content-addressed batch/v1 Job out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tuneops import GROUP, labels
from tuneops.api.common import JobTemplate
from tuneops.config import OperatorConfig
from tuneops.render.env import Source, env_value, merge_env, source_env
from tuneops.render.names import canonical_json, content_hash, metadata, standard_labels, step_name
from tuneops.render.pod import (
    GPU_RESOURCE,
    TERMINATION_LOG,
    TMP_VOLUME,
    container_defaults,
    empty_dir,
    pod_spec,
    sorted_resources,
    tmp_volume,
    with_scratch_request,
)
from tuneops.render.types import Manifest, Owner
from tuneops.render.volumes import Mounts
from tuneops.storage.artifacts import JOB_NAME_ENV
from tuneops.storage.integrity import EXPECT_ENV, HASH_INPUTS_ENV

WORKER_CONTAINER = "worker"
CODE_CONTAINER = "code"
CODE_DIR = "/opt/tuneops-code"
SCRATCH_DIR = "/scratch"
# Exit code of a container the kernel killed for memory: retrying with the same limit fails the same way.
OOM_EXIT_CODE = 137
INPUT_DIGESTS = f"{GROUP}/input-digests"


@dataclass(frozen=True)
class WorkerStep:
    """One worker Job: the command line, what it reads and writes, and the credentials of each of those."""

    step: str
    image: str
    args: tuple[str, ...]
    inputs: tuple[str, ...]
    output: str | None
    digests: Mapping[str, str | None]
    sources: tuple[Source, ...] = ()
    gpus: int = 0
    # The resource's tuneops.io/refresh annotation: a new value gives a new Job that reads its inputs again.
    refresh: str | None = None
    # The worker's entry point; ("python3", "-m", "tuneops.workers.cli") where `image` is not the worker image
    command: tuple[str, ...] = ("tuneops",)
    # When set, an init container of this image (the worker image) puts the project's code on a volume, and the
    # worker container, of another image (vLLM's, for the benchmark), runs it from there (PYTHONPATH).
    code_image: str | None = None
    # A memory-backed /dev/shm of this size (vLLM's engine queues, and NCCL across GPUs, need more than 64 MB)
    shm: str | None = None
    # More init containers, after the code copy (the benchmark's downloads of s3:// inputs into scratch)
    init: tuple[dict[str, Any], ...] = ()


def worker_cmd(subcommand: str, *args: str) -> tuple[str, ...]:
    return ("worker", subcommand, *args)


def worker_resources(template: JobTemplate, config: OperatorConfig, gpus: int) -> tuple[dict[str, Any], str]:
    """Resources of a worker container, and which resource OMP_NUM_THREADS follows.

    Without a spec, request and limit the operator's defaults (CPU limit = request, so the thread count
    matches the cores the Pod may use; memory limit = request, so OOM is reported rather than node pressure).
    """
    res = template.resources
    requests: dict[str, int | str] = dict((res.requests if res else None) or {})
    limits: dict[str, int | str] = dict((res.limits if res else None) or {})
    if res is None:
        requests = {"cpu": config.worker_cpu, "memory": config.worker_memory}
        limits = dict(requests)
    if gpus > 0:
        limits[GPU_RESOURCE] = str(max(gpus, int(limits.get(GPU_RESOURCE, "0"))))
    if GPU_RESOURCE in requests and GPU_RESOURCE not in limits:
        limits[GPU_RESOURCE] = requests[GPU_RESOURCE]
    threads_from = "limits.cpu" if "cpu" in limits else "requests.cpu"
    return sorted_resources(limits, with_scratch_request(requests, config)), threads_from


def job_gpus(template: JobTemplate, wanted: int = 0) -> int:
    res = template.resources
    declared = 0
    for block in ((res.limits or {}) if res else {}, (res.requests or {}) if res else {}):
        if GPU_RESOURCE in block:
            declared = max(declared, int(str(block[GPU_RESOURCE])))
    return max(declared, wanted)


def worker_env(config: OperatorConfig, step: WorkerStep, threads_from: str) -> list[dict[str, Any]]:
    ours: list[dict[str, Any]] = [
        env_value("HOME", SCRATCH_DIR),
        env_value("HF_HOME", f"{SCRATCH_DIR}/huggingface"),
        env_value("TMPDIR", SCRATCH_DIR),
        env_value("TUNEOPS_PVC_ROOT", config.pvc_mount_root),
        env_value("TUNEOPS_TERMINATION_LOG", TERMINATION_LOG),
        {
            "name": "OMP_NUM_THREADS",
            "valueFrom": {
                "resourceFieldRef": {
                    "containerName": WORKER_CONTAINER,
                    "divisor": "1",
                    "resource": threads_from,
                }
            },
        },
    ]
    expected = {uri: d for uri, d in sorted(step.digests.items()) if d and d.startswith("sha256:")}
    if expected:
        # The worker checks each input against the digest its producer recorded before using it.
        ours.append(env_value(EXPECT_ENV, canonical_json(expected)))
    if config.hash_verified_inputs:
        ours.append(env_value(HASH_INPUTS_ENV, "always"))
    ours += source_env(step.sources, ambient=config.allow_ambient_credentials)
    return merge_env(ours)


def scratch_volume(config: OperatorConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    return empty_dir("scratch", config.scratch.worker), {"mountPath": SCRATCH_DIR, "name": "scratch"}


def worker_pod_spec(config: OperatorConfig, template: JobTemplate, step: WorkerStep) -> dict[str, Any]:
    """The Pod of a worker Job: the claims of its inputs (read-only) and output (read-write), and scratch."""
    mounts = Mounts(config)
    for uri in step.inputs:
        mounts.add(uri)
    mounts.add(step.output, write=True)
    resources, threads_from = worker_resources(template, config, step.gpus)
    scratch, scratch_mount = scratch_volume(config)
    tmp, tmp_mount = tmp_volume(config)
    env = worker_env(config, step, threads_from)
    volume_mounts = [*mounts.volume_mounts(), scratch_mount, tmp_mount]
    volumes = [*mounts.volumes(), scratch, tmp]
    init: list[dict[str, Any]] = []
    if step.code_image:
        init.append(code_container(step.code_image, config))
        volumes.append(empty_dir(CODE_CONTAINER, "64Mi"))
        volume_mounts.append({"mountPath": CODE_DIR, "name": CODE_CONTAINER, "readOnly": True})
        env = merge_env([*env, env_value("PYTHONPATH", CODE_DIR)])
    if step.shm:
        volumes.append(empty_dir("dshm", step.shm, medium="Memory"))
        volume_mounts.append({"mountPath": "/dev/shm", "name": "dshm"})
    container: dict[str, Any] = {
        "args": list(step.args),
        "command": list(step.command),
        "env": env,
        "image": step.image,
        "name": WORKER_CONTAINER,
        "resources": resources,
        "volumeMounts": volume_mounts,
        **container_defaults(),
    }
    spec = pod_spec(
        config,
        containers=[container],
        volumes=volumes,
        gpus=job_gpus(template, step.gpus),
        node_selector=template.node_selector,
        tolerations=[t.wire() for t in template.tolerations or []],
        affinity=template.affinity,
        priority_class_name=template.priority_class_name,
        service_account_name=template.service_account_name,
    )
    init += step.init
    if init:
        spec["initContainers"] = init
    return {**spec, "restartPolicy": "Never"}


def code_container(image: str, config: OperatorConfig) -> dict[str, Any]:
    """Copies the project's code from the worker image onto the code volume (`tuneops worker export-code`)."""
    return {
        "args": ["worker", "export-code", "--to", CODE_DIR],
        "command": ["tuneops"],
        "env": [env_value("HOME", "/tmp")],
        "image": image,
        "name": CODE_CONTAINER,
        "resources": sorted_resources(
            {"memory": "256Mi"}, with_scratch_request({"cpu": "100m", "memory": "256Mi"}, config)
        ),
        "volumeMounts": [
            {"mountPath": CODE_DIR, "name": CODE_CONTAINER},
            {"mountPath": "/tmp", "name": TMP_VOLUME},
        ],
        **container_defaults(),
    }


def pod_failure_policy() -> dict[str, Any]:
    return {
        "rules": [
            # Preemption, eviction and node drain are not the worker's fault: retry without counting.
            {"action": "Ignore", "onPodConditions": [{"status": "True", "type": "DisruptionTarget"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": WORKER_CONTAINER,
                    "operator": "In",
                    "values": [OOM_EXIT_CODE],
                },
            },
        ]
    }


def render_job(owner: Owner, config: OperatorConfig, template: JobTemplate, step: WorkerStep) -> Manifest:
    """A complete worker Job whose name is the hash of everything that shapes its Pod.

    The hash covers the pod template (image, args with the input/output URIs, env, resources, scheduling),
    the input digests, backoffLimit and activeDeadlineSeconds. It leaves out ttlSecondsAfterFinished and
    podFailurePolicy: those follow the operator's configuration and cluster version, and changing them must
    not re-run finished work. The worker's TUNEOPS_JOB_NAME, the name itself, is set after hashing.
    """
    pod_spec = worker_pod_spec(config, template, step)
    digests = {uri: d for uri, d in sorted(step.digests.items()) if d}
    hashed = {
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "backoffLimit": template.backoff_limit,
        "digests": digests,
        "pod": pod_spec,
    }
    if step.refresh:
        hashed["refresh"] = step.refresh
    spec_hash = content_hash(hashed)
    annotations = {labels.SPEC_HASH: spec_hash}
    if step.refresh:
        annotations[labels.REFRESH] = step.refresh
    if digests:
        annotations[INPUT_DIGESTS] = canonical_json(digests)
    job_spec: dict[str, Any] = {
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "backoffLimit": template.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": standard_labels(owner, step.step)}, "spec": pod_spec},
        "ttlSecondsAfterFinished": config.job_ttl_seconds,
    }
    if config.features.pod_failure_policy:
        job_spec["podFailurePolicy"] = pod_failure_policy()
    name = step_name(owner.name, step.step, spec_hash)
    # The Job's own name (known only once hashed) names the worker's staging folder: Jobs that write one
    # output side by side (a superseded one next to its replacement) never share it.
    container = pod_spec["containers"][0]
    container["env"] = merge_env([*container["env"], env_value(JOB_NAME_ENV, name)])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, name, step.step, annotations=annotations),
        "spec": job_spec,
    }
