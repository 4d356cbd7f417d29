"""Pieces every renderer shares: resolved inputs, owner references, labels, names, volumes, Jobs, secrets."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneops import GROUP, labels
from tuneops.api.common import JobTemplate, SecretKeyRef
from tuneops.config import OperatorConfig

Manifest = dict[str, Any]

MAX_NAME = 63
HASH_LEN = 8
WORKER_CONTAINER = "worker"
TERMINATION_LOG = "/dev/termination-log"
SCRATCH_DIR = "/scratch"
RUN_AS_USER = 1000
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# Exit code of a container the kernel killed for memory: retrying with the same limit fails the same way.
OOM_EXIT_CODE = 137
INPUT_DIGESTS = f"{GROUP}/input-digests"

ModelFormat = Literal["hf", "compressed-tensors", "awq", "gguf"]


class RenderError(ValueError):
    """The resource cannot be rendered as given (the reconciler reports it as InvalidSpec)."""


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns what is rendered (from its metadata)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
        }


@dataclass(frozen=True)
class ResolvedModel:
    """A model artifact after the reconciler followed references: where it is and what it is.

    `digest` is the content address (sha256 of the artifact manifest, or a pinned revision); a new digest
    under the same URI gives new Job names and rolls serving Pods. `files` lists notable files inside the
    artifact (one per GGUF quantization type). `num_attention_heads` and `base_model_name` come from the
    model's config when known and feed the compatibility checks.
    """

    uri: str
    digest: str | None = None
    format: ModelFormat = "hf"
    files: tuple[str, ...] = ()
    num_attention_heads: int | None = None
    base_model_name: str | None = None
    size_bytes: int | None = None
    token_secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class ResolvedAdapter:
    """A LoRA adapter to serve, with the facts the inspect step read from adapter_config.json."""

    name: str
    uri: str
    digest: str | None = None
    rank: int | None = None
    base_model_name: str | None = None
    use_dora: bool = False
    modules_to_save: tuple[str, ...] = ()


@dataclass(frozen=True)
class Problem:
    """A reason the resource cannot be served or run as specified; `reason` is a condition reason."""

    reason: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def model_format(artifact_format: str | None) -> ModelFormat:
    """Map an artifact's recorded format (status.artifact.format) to the format the renderers reason about."""
    mapping: dict[str | None, ModelFormat] = {
        None: "hf",
        "safetensors": "hf",
        "hf": "hf",
        "compressed-tensors": "compressed-tensors",
        "awq": "awq",
        "gguf": "gguf",
    }
    if artifact_format not in mapping:
        raise RenderError(f"unknown model artifact format {artifact_format!r}")
    return mapping[artifact_format]


# ---------------------------------------------------------------------------------------------- hashing, names


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def content_hash(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (dict key order does not matter)."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _dns_label(text: str) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return out or "x"


def bounded_name(*parts: str, digest: str | None = None, limit: int = MAX_NAME) -> str:
    """`part1-part2[-digest8]` as a DNS label of at most `limit` characters.

    A name that does not fit is cut and gets a hash of the full name appended, so two long names that share a
    prefix stay distinct. A name that starts with a digit gets a letter prefix (Service names must not).
    """
    base = "-".join(_dns_label(p) for p in parts if p)
    if base[0].isdigit():
        base = "t" + base
    suffix = f"-{digest[:HASH_LEN]}" if digest else ""
    if len(base) + len(suffix) <= limit:
        return base + suffix
    cut = limit - len(suffix) - HASH_LEN - 1
    return f"{base[:cut].rstrip('-')}-{content_hash(base)[:HASH_LEN]}{suffix}"


def step_name(cr_name: str, step: str, spec_hash: str) -> str:
    """Content-addressed child name `<cr>-<step>-<hash8>` (a restarted operator finds the same Job)."""
    return bounded_name(cr_name, step, digest=spec_hash)


def label_value(text: str) -> str:
    """A label value (at most 63 characters, alphanumeric ends); long values are cut and hashed."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    if len(clean) <= MAX_NAME:
        return clean
    return f"{clean[: MAX_NAME - HASH_LEN - 1].rstrip('-._')}-{content_hash(text)[:HASH_LEN]}"


# ---------------------------------------------------------------------------------------------- metadata


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """The stable subset of labels used in selectors (immutable on Deployments, so never extended)."""
    return {
        labels.COMPONENT: component,
        labels.INSTANCE: label_value(owner.name),
        labels.NAME: "tuneops",
        labels.KIND: owner.kind,
    }


def standard_labels(owner: Owner, component: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        **selector_labels(owner, component),
        labels.MANAGED_BY: labels.MANAGED_BY_VALUE,
        labels.PART_OF: "tuneops",
        labels.OWNER: owner.uid,
        **(extra or {}),
    }
    return dict(sorted(out.items()))


def metadata(
    owner: Owner,
    name: str,
    component: str,
    *,
    extra_labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "labels": standard_labels(owner, component, extra_labels),
        "name": name,
        "namespace": owner.namespace,
        "ownerReferences": [owner.reference()],
    }
    if annotations:
        meta["annotations"] = dict(sorted(annotations.items()))
    return meta


# ---------------------------------------------------------------------------------------------- URIs, volumes


def split_uri(uri: str) -> tuple[str, str]:
    scheme, _, rest = uri.partition("://")
    return scheme, rest


def default_output_uri(config: OperatorConfig, owner: Owner) -> str:
    return f"{config.artifact_root.rstrip('/')}/{owner.namespace}/{owner.name}"


def with_revision(uri: str, revision: str | None) -> str:
    """hf://org/name + revision -> hf://org/name@revision (a revision already in the URI wins)."""
    scheme, rest = split_uri(uri)
    if scheme != "hf" or not revision or "@" in rest:
        return uri
    return f"{uri}@{revision}"


def pvc_claim(uri: str) -> tuple[str, str]:
    """pvc://claim/some/path -> (claim, some/path)."""
    claim, _, path = split_uri(uri)[1].partition("/")
    return claim, path.strip("/")


def pvc_volume_name(claim: str) -> str:
    return bounded_name("pvc", claim)


def local_path(uri: str, config: OperatorConfig) -> str:
    """Where a pvc:// or file:// URI is found inside a Pod (other schemes are not files)."""
    scheme, rest = split_uri(uri)
    if scheme == "pvc":
        claim, path = pvc_claim(uri)
        root = f"{config.pvc_mount_root.rstrip('/')}/{claim}"
        return f"{root}/{path}" if path else root
    if scheme == "file":
        return "/" + rest.lstrip("/")
    raise RenderError(f"{uri!r} is not a file path inside the Pod")


@dataclass
class Mounts:
    """PVC volumes for a set of URIs: each claim mounted once at <pvc_mount_root>/<claim>, read-only unless
    some URI on it is written."""

    config: OperatorConfig
    claims: dict[str, bool] = field(default_factory=dict)

    def add(self, uri: str | None, *, write: bool = False) -> None:
        if uri is None or split_uri(uri)[0] != "pvc":
            return
        claim, _ = pvc_claim(uri)
        self.claims[claim] = self.claims.get(claim, False) or write

    def volumes(self) -> list[dict[str, Any]]:
        return [
            {
                "name": pvc_volume_name(claim),
                "persistentVolumeClaim": {"claimName": claim, "readOnly": not write},
            }
            for claim, write in sorted(self.claims.items())
        ]

    def volume_mounts(self) -> list[dict[str, Any]]:
        return [
            {
                "mountPath": f"{self.config.pvc_mount_root.rstrip('/')}/{claim}",
                "name": pvc_volume_name(claim),
                "readOnly": not write,
            }
            for claim, write in sorted(self.claims.items())
        ]


# ---------------------------------------------------------------------------------------------- env and secrets


def env_value(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def env_secret(name: str, secret: str, key: str, *, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"key": key, "name": secret}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


AWS_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)


def credential_env(secret: SecretKeyRef | None, uris: Iterable[str | None]) -> list[dict[str, Any]]:
    """Credentials for downloads, only ever as env valueFrom.

    HF_TOKEN comes from the referenced key when any URI is hf://. For s3:// the same Secret is read for the
    standard AWS_* keys (each optional, so a cluster using workload identity needs none of them).
    """
    if secret is None:
        return []
    schemes = {split_uri(u)[0] for u in uris if u}
    out: list[dict[str, Any]] = []
    if "hf" in schemes:
        out.append(env_secret("HF_TOKEN", secret.name, secret.key))
    if "s3" in schemes:
        out += [env_secret(k, secret.name, k, optional=True) for k in AWS_KEYS]
    return out


def merge_env(
    ours: Iterable[Mapping[str, Any]], theirs: Iterable[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Env sorted by name; a user-supplied variable replaces one of ours with the same name."""
    by_name: dict[str, dict[str, Any]] = {str(e["name"]): dict(e) for e in ours}
    for e in theirs:
        by_name[str(e["name"])] = dict(e)
    return [by_name[n] for n in sorted(by_name)]


# ---------------------------------------------------------------------------------------------- pods


def pod_security_context() -> dict[str, Any]:
    return {
        "fsGroup": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def quantity_str(q: int | str) -> str:
    return str(q)


def cpu_cores(q: int | str | None) -> int | None:
    """Whole cores of a CPU quantity, rounded up ("500m" -> 1, "2" -> 2)."""
    if q is None:
        return None
    text = str(q).strip()
    try:
        value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError as err:
        raise RenderError(f"cannot read CPU quantity {q!r}") from err
    return max(1, math.ceil(value))


def gpu_tolerations(
    user: Sequence[Mapping[str, Any]], gpus: int, config: OperatorConfig
) -> list[dict[str, Any]]:
    out = [dict(t) for t in user]
    if gpus > 0 and config.gpu_toleration:
        tol = {"effect": "NoSchedule", "key": GPU_RESOURCE, "operator": "Exists"}
        if tol not in out:
            out.append(tol)
    return out


def with_gpu_product(affinity: Mapping[str, Any] | None, product: str | None) -> dict[str, Any] | None:
    """The user's affinity with a required nvidia.com/gpu.product term ANDed into every node selector term."""
    if not product:
        return dict(affinity) if affinity else None
    out = json.loads(canonical_json(affinity or {}))
    expr = {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]}
    node = out.setdefault("nodeAffinity", {})
    required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).append(expr)
    return dict(out)


def scheduling_fields(
    *,
    node_selector: Mapping[str, str] | None,
    tolerations: list[dict[str, Any]],
    affinity: Mapping[str, Any] | None,
    priority_class_name: str | None,
    service_account_name: str | None,
    runtime_class_name: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if node_selector:
        out["nodeSelector"] = dict(sorted(node_selector.items()))
    if tolerations:
        out["tolerations"] = tolerations
    if affinity:
        out["affinity"] = dict(affinity)
    if priority_class_name:
        out["priorityClassName"] = priority_class_name
    if service_account_name:
        out["serviceAccountName"] = service_account_name
        out["automountServiceAccountToken"] = True
    else:
        # Workers and servers never talk to the API server; no token in the Pod unless a ServiceAccount
        # (for workload identity, say) is asked for.
        out["automountServiceAccountToken"] = False
    if runtime_class_name:
        out["runtimeClassName"] = runtime_class_name
    return out


# ---------------------------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class WorkerStep:
    """One worker Job: the command line and what it reads and writes."""

    step: str
    image: str
    args: tuple[str, ...]
    inputs: tuple[str, ...]
    output: str | None
    digests: Mapping[str, str | None]
    secret: SecretKeyRef | None
    gpus: int = 0


def worker_resources(template: JobTemplate, config: OperatorConfig, gpus: int) -> tuple[dict[str, Any], str]:
    """Resources of a worker container, and which resource OMP_NUM_THREADS follows.

    Without a spec, request and limit the operator's defaults (CPU limit = request, so the thread count
    matches the cores the Pod may use; memory limit = request, so OOM is reported rather than node pressure).
    """
    res = template.resources
    requests = {k: quantity_str(v) for k, v in ((res.requests if res else None) or {}).items()}
    limits = {k: quantity_str(v) for k, v in ((res.limits if res else None) or {}).items()}
    if res is None:
        requests = {"cpu": config.worker_cpu, "memory": config.worker_memory}
        limits = dict(requests)
    if gpus > 0:
        limits[GPU_RESOURCE] = str(max(gpus, int(limits.get(GPU_RESOURCE, "0"))))
    if GPU_RESOURCE in requests and GPU_RESOURCE not in limits:
        limits[GPU_RESOURCE] = requests[GPU_RESOURCE]
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = dict(sorted(limits.items()))
    if requests:
        out["requests"] = dict(sorted(requests.items()))
    threads_from = "limits.cpu" if "cpu" in limits else "requests.cpu"
    return out, threads_from


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
    ours += credential_env(step.secret, (*step.inputs, step.output))
    return merge_env(ours)


def scratch_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    return {"emptyDir": {}, "name": "scratch"}, {"mountPath": SCRATCH_DIR, "name": "scratch"}


def render_job(owner: Owner, config: OperatorConfig, template: JobTemplate, step: WorkerStep) -> Manifest:
    """A complete worker Job whose name is the hash of everything that shapes its Pod.

    The hash covers the pod template (image, args with the input/output URIs, env, resources, scheduling),
    the input digests, backoffLimit and activeDeadlineSeconds. It leaves out ttlSecondsAfterFinished and
    podFailurePolicy: those follow the operator's configuration and cluster version, and changing them must
    not re-run finished work.
    """
    mounts = Mounts(config)
    for uri in step.inputs:
        mounts.add(uri)
    mounts.add(step.output, write=True)
    resources, threads_from = worker_resources(template, config, step.gpus)
    scratch, scratch_mount = scratch_volume()
    container: dict[str, Any] = {
        "args": list(step.args),
        "command": ["tuneops"],
        "env": worker_env(config, step, threads_from),
        "image": step.image,
        "imagePullPolicy": "IfNotPresent",
        "name": WORKER_CONTAINER,
        "resources": resources,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [*mounts.volume_mounts(), scratch_mount],
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "enableServiceLinks": False,
        "restartPolicy": "Never",
        "securityContext": pod_security_context(),
        "volumes": [*mounts.volumes(), scratch],
        **scheduling_fields(
            node_selector=template.node_selector,
            tolerations=gpu_tolerations(
                [t.wire() for t in template.tolerations or []], job_gpus(template, step.gpus), config
            ),
            affinity=template.affinity,
            priority_class_name=template.priority_class_name,
            service_account_name=template.service_account_name,
        ),
    }
    digests = {uri: d for uri, d in sorted(step.digests.items()) if d}
    hashed = {
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "backoffLimit": template.backoff_limit,
        "digests": digests,
        "pod": pod_spec,
    }
    spec_hash = content_hash(hashed)
    name = step_name(owner.name, step.step, spec_hash)
    annotations = {labels.SPEC_HASH: spec_hash}
    if digests:
        annotations[INPUT_DIGESTS] = canonical_json(digests)
    job_spec: dict[str, Any] = {
        "activeDeadlineSeconds": template.active_deadline_seconds,
        "backoffLimit": template.backoff_limit,
        "completions": 1,
        "parallelism": 1,
        "template": {
            "metadata": {"labels": standard_labels(owner, step.step)},
            "spec": pod_spec,
        },
        "ttlSecondsAfterFinished": config.job_ttl_seconds,
    }
    if config.features.pod_failure_policy:
        job_spec["podFailurePolicy"] = {
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
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(owner, name, step.step, annotations=annotations),
        "spec": job_spec,
    }


def worker_cmd(subcommand: str, *args: str) -> tuple[str, ...]:
    return ("worker", subcommand, *args)


def gguf_file(files: Sequence[str], gguf_type: str | None) -> str | None:
    """The GGUF file of a quantization type among an artifact's files (the first .gguf when no type is asked)."""
    # The artifact lists its files in the order of spec.gguf.quantTypes: no type asked means the first one.
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if gguf_type is None:
        return ggufs[0] if ggufs else None
    want = gguf_type.lower()
    exact = [f for f in ggufs if f.lower().removesuffix(".gguf").endswith(want)]
    if exact:
        return exact[0]
    loose = [f for f in ggufs if want in f.lower()]
    return loose[0] if len(loose) == 1 else None


def join_uri(uri: str, file: str) -> str:
    return f"{uri.rstrip('/')}/{file}"
