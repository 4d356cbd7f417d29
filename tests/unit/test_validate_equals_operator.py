"""`tuneops validate` refuses what the operator refuses: the same resources, the same field.

Each row is a set of resources the operator refuses. The last one is the subject; the others are what it
references, with the status they have once Ready (validate ignores status and predicts the same facts from
their specs). For each row:
  (a) the operator's reconciler, run against an in-memory API holding the row, sets a refusal reason and
      names the field (an adapter refused alone is named in status.adapters);
  (b) `tuneops validate -f` and `tuneops render -f` on the same file exit 2 naming the same field.

Every place in reconcile/, render/ and validation/ that can refuse a spec (found by reading the code,
not by a list kept by hand) must be reached by a row's reconcile, or be listed in RUNTIME_ONLY with why no
file can show it. A new refusal without a row fails `test_every_refusal_has_a_row`.
"""

from __future__ import annotations

import ast
import copy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, cast

import pytest
import yaml

import tuneops
from tuneops.api.conditions import Reason
from tuneops.cli import main
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile import RECONCILERS
from tuneops.reconcile.base import Context

PKG = Path(tuneops.__file__).parent
SCANNED = sorted(
    [*(PKG / "reconcile").rglob("*.py"), *(PKG / "render").rglob("*.py"), *(PKG / "validation").rglob("*.py")]
)

# Reasons that refuse a spec as written (the person must change it). Job failures, a failed quality gate or an
# adapter a Pod would not load are outcomes of running, not refusals of the spec.
REFUSALS = {Reason.INVALID_SPEC, Reason.INCOMPATIBLE_ADAPTER, Reason.SOURCE_NOT_FOUND, Reason.NOT_ALLOWED}
# Calls that make a refusal: the reconcilers' exception, a problem record, check_inferenceservice's reporters.
REFUSING_CALLS = {"Invalid", "Problem", "invalid", "incompatible"}

# (file under tuneops/, function, text in the refusing statement) -> why only a running cluster can show it.
RUNTIME_ONLY: dict[tuple[str, str, str], str] = {
    ("reconcile/finetunedmodel.py", "_inspected", "INCOMPATIBLE_ADAPTER"): (
        "the inspect Job reads adapter_config.json and the base's config (ranks, target modules, base model)"
    ),
    (
        "reconcile/sources.py",
        "_api_key",
        "Invalid(",
    ): "the API key is a Secret's data, which lives in the cluster",
    ("validation/serving.py", "_check_parallelism", "attention heads"): (
        "a model's head count comes from its config.json; no file given to validate has it"
    ),
    (
        "validation/serving.py",
        "_adapter_problems",
        "rank",
    ): "the adapter's rank is read by the inspect Job",
    ("validation/serving.py", "_adapter_problems", "was trained on"): (
        "the adapter's base model is read from adapter_config.json by the inspect Job"
    ),
    ("validation/serving.py", "_adapter_problems", "DoRA"): "use_dora is read by the inspect Job",
    (
        "validation/serving.py",
        "_adapter_problems",
        "modules_to_save",
    ): "modules_to_save is read by the inspect Job",
    ("validation/quantization.py", "check_quantizationjob", "Problem("): (
        "the format a FineTunedModel's Job recorded in status; every source validate can predict is a Hugging "
        "Face model (a merge writes safetensors)"
    ),
    # A LoRAAdapter's verdict is its service's, made over every LoRAAdapter in the cluster that asks for it (their
    # ages decide a name both want, their namespaces' labels a Selector); validate predicts it from the service and
    # the adapters in the given files (tests/unit/test_loraadapter.py).
    ("validation/attach.py", "decide", "INVALID_SPEC"): "the adapter is judged by its service's reconcile",
    ("validation/attach.py", "decide", "NOT_ALLOWED"): "the adapter is judged by its service's reconcile",
    ("render/plan.py", "attach_verdict", "Problem("): "validate's prediction of the service's verdict",
    ("render/plan.py", "serve_problems", "Problem("): (
        "validate's prediction of the operator's refusal in reconcile/sources.py served_form (row "
        "spec/serve-merged-of-an-unmerged-finetunedmodel)"
    ),
    ("validation/references.py", "check_reference", "this resource itself"): (
        "no kind references its own kind, so no spec reaches it; kept as a guard"
    ),
}

FTM_HEAD = "apiVersion: tuneops.io/v1alpha1\nkind: FineTunedModel\n"
QJ_HEAD = "apiVersion: tuneops.io/v1alpha1\nkind: QuantizationJob\n"
IS_HEAD = "apiVersion: tuneops.io/v1alpha1\nkind: InferenceService\n"

QJ_GGUF = (
    QJ_HEAD
    + """metadata: {name: q}
spec: {source: {uri: "hf://org/model"}, method: gguf, gguf: {quantTypes: [Q4_K_M]}}
status:
  artifact: {uri: "pvc://store/q", format: gguf, files: [q-Q4_K_M.gguf]}
"""
)
QJ_AWQ = (
    QJ_HEAD
    + """metadata: {name: q}
spec: {source: {uri: "hf://org/model"}, method: awq}
status:
  artifact: {uri: "pvc://store/q", format: compressed-tensors}
"""
)
FTM_UNMERGED = (
    FTM_HEAD
    + """metadata: {name: tuned}
spec:
  baseModel: {uri: "pvc://models/base"}
  adapter: {uri: "pvc://adapters/a"}
  merge: {enabled: false}
status:
  artifact: {uri: "pvc://store/tuned/0123456789abcdef", format: peft}
"""
)


@dataclass(frozen=True)
class Row:
    id: str
    docs: str  # YAML documents; the last is the resource refused (or, in ACCEPTED, served)
    field: str = ""
    reason: str = ""
    config: dict[str, Any] | None = None


ROWS = [
    Row(
        "spec/benchmark-on-a-service-in-another-namespace",
        FTM_HEAD
        + """metadata: {name: tuned}
spec:
  baseModel: {uri: "pvc://models/base"}
  adapter: {uri: "pvc://adapters/a"}
  benchmark: {enabled: true, serviceRef: {name: svc, namespace: other}}
""",
        "spec.benchmark.serviceRef",
        Reason.INVALID_SPEC,
    ),
    Row(
        "spec/serve-merged-of-an-unmerged-finetunedmodel",
        FTM_UNMERGED
        + "---\n"
        + IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {fineTunedModelRef: {name: tuned}, serve: merged}
  resources: {gpus: 1}
""",
        "spec.model.serve",
        Reason.INVALID_SPEC,
    ),
    Row(
        "spec/vllm-tensor-parallel-without-gpus",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {tensorParallelSize: 4}, resources: {gpus: 0}}
""",
        "spec.resources.gpus",
        Reason.INVALID_SPEC,
    ),
    Row(
        "spec/merge-dtype",
        FTM_HEAD
        + """metadata: {name: tuned}
spec: {baseModel: {uri: "hf://org/base"}, adapter: {uri: "hf://org/adapter"}, merge: {dtype: float8}}
""",
        "spec.merge.dtype",
        Reason.INVALID_SPEC,
    ),
    Row(
        "spec/base-revision-set-twice",
        FTM_HEAD
        + """metadata: {name: tuned}
spec: {baseModel: {uri: "hf://org/base@v2", revision: v3}, adapter: {uri: "pvc://adapters/a"}}
""",
        "spec.baseModel.revision",
        Reason.INVALID_SPEC,
    ),
    Row(
        "spec/adapter-uri-on-s3",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  lora: {adapters: [{name: a, uri: "s3://bucket/a"}]}
""",
        "spec.lora.adapters[0].uri",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "spec/adapter-uri-hf-at-a-revision-without-runtime-loading",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  lora: {dynamic: false, adapters: [{name: a, uri: "hf://org/a@v2"}]}
""",
        "spec.lora",
        Reason.INVALID_SPEC,
    ),
    Row(
        "spec/fetched-adapter-on-a-multi-node-service",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  resources: {gpus: 1}
  vllm: {nodes: 2, pipelineParallelSize: 2}
  lora: {adapters: [{name: a, uri: "hf://org/a@v2"}]}
""",
        "spec.lora.adapters[0].uri",
        Reason.INVALID_SPEC,
    ),
    Row(
        "ref/quantization-source-in-another-namespace",
        QJ_HEAD
        + """metadata: {name: q}
spec: {source: {fineTunedModelRef: {name: tuned, namespace: other}}, method: awq}
""",
        "spec.source.fineTunedModelRef",
        Reason.INVALID_SPEC,
    ),
    Row(
        "ref/served-model-in-another-namespace",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {quantizationJobRef: {name: q, namespace: other}}}
""",
        "spec.model.quantizationJobRef",
        Reason.INVALID_SPEC,
    ),
    Row(
        "ref/adapter-in-another-namespace",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "hf://org/model"}
  lora: {adapters: [{name: a, fineTunedModelRef: {name: tuned, namespace: other}}]}
""",
        "spec.lora.adapters[0].fineTunedModelRef",
        Reason.INVALID_SPEC,
    ),
    Row(
        "source/quantize-an-unmerged-finetunedmodel",
        FTM_UNMERGED
        + "---\n"
        + QJ_HEAD
        + """metadata: {name: q}
spec: {source: {fineTunedModelRef: {name: tuned}}, method: gguf}
""",
        "spec.source.fineTunedModelRef",
        Reason.INVALID_SPEC,
    ),
    Row(
        "format/vllm-on-a-gguf-quantizationjob",
        QJ_GGUF
        + "---\n"
        + IS_HEAD
        + """metadata: {name: svc}
spec: {model: {quantizationJobRef: {name: q}}}
""",
        "spec.runtime",
        Reason.INVALID_SPEC,
    ),
    Row(
        "format/vllm-on-a-gguf-uri",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "pvc://models/model-Q4_K_M.gguf"}}
""",
        "spec.runtime",
        Reason.INVALID_SPEC,
    ),
    Row(
        "format/llamacpp-on-an-awq-quantizationjob",
        QJ_AWQ
        + "---\n"
        + IS_HEAD
        + """metadata: {name: svc}
spec: {model: {quantizationJobRef: {name: q}}, runtime: llamacpp}
""",
        "spec.runtime",
        Reason.INVALID_SPEC,
    ),
    Row(
        "format/llamacpp-gguf-type-not-quantized",
        QJ_GGUF
        + "---\n"
        + IS_HEAD
        + """metadata: {name: svc}
spec: {model: {quantizationJobRef: {name: q}, ggufType: Q8_0}, runtime: llamacpp}
""",
        "spec.model",
        Reason.INVALID_SPEC,
    ),
    Row(
        "format/lora-on-a-gguf-model",
        QJ_GGUF
        + "---\n"
        + IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {quantizationJobRef: {name: q}}
  lora: {adapters: [{name: a, uri: "pvc://adapters/a"}]}
""",
        "spec.lora",
        Reason.INVALID_SPEC,
    ),
    Row(
        "lora/max-cpu-loras-below-max-loras",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "hf://org/model"}
  lora: {maxLoras: 4, maxCpuLoras: 2, adapters: [{name: a, uri: "pvc://adapters/a"}]}
""",
        "spec.lora.maxCpuLoras",
        Reason.INVALID_SPEC,
    ),
    Row(
        "adapter/published-to-s3",
        FTM_HEAD
        + """metadata: {name: tuned}
spec:
  baseModel: {uri: "pvc://models/base"}
  adapter: {uri: "pvc://adapters/a"}
  merge: {enabled: false}
  output: {uri: "s3://bucket/tuned", tokenSecretRef: {name: aws}}
status:
  artifact: {uri: "s3://bucket/tuned/0123456789abcdef", format: peft}
---
"""
        + IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  lora: {adapters: [{name: ok, uri: "pvc://adapters/ok"}, {name: a, fineTunedModelRef: {name: tuned}}]}
""",
        "spec.lora.adapters[1]",
        Reason.INCOMPATIBLE_ADAPTER,
    ),
    Row(
        "adapter/hf-at-a-revision",
        FTM_HEAD
        + """metadata: {name: tuned}
spec: {baseModel: {uri: "pvc://models/base"}, adapter: {uri: "hf://org/adapter@v2"}}
status:
  artifact: {uri: "pvc://store/tuned", format: safetensors}
---
"""
        + IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  lora: {adapters: [{name: a, fineTunedModelRef: {name: tuned}}]}
""",
        "spec.lora.adapters[0]",
        Reason.INCOMPATIBLE_ADAPTER,
    ),
    Row(
        "routing/no-endpoint-picker-in-the-spec-or-the-operator-config",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, routing: {gateway: {name: inference-gateway}}}
""",
        "spec.routing.endpointPicker",
        Reason.INVALID_SPEC,
    ),
    # What a tenant may choose for its Pods (the operator config's allow-lists, docs/security.md).
    Row(
        "allow/server-image",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, image: "evil.example/vllm:latest"}
""",
        "spec.image",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/worker-image-outside-the-allowed-prefix",
        FTM_HEAD
        + """metadata: {name: tuned}
spec: {baseModel: {uri: "hf://org/base"}, adapter: {uri: "hf://org/a"}, job: {image: "evil.example/w:1"}}
""",
        "spec.job.image",
        Reason.NOT_ALLOWED,
        {"allow": {"images": ["registry.example/tuneops/*"]}},
    ),
    Row(
        "allow/worker-service-account",
        FTM_HEAD
        + """metadata: {name: tuned}
spec: {baseModel: {uri: "hf://org/base"}, adapter: {uri: "hf://org/a"}, job: {serviceAccountName: admin}}
""",
        "spec.job.serviceAccountName",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/quantization-priority-class",
        QJ_HEAD
        + """metadata: {name: q}
spec: {source: {uri: "hf://org/model"}, method: awq, job: {priorityClassName: system-node-critical}}
""",
        "spec.job.priorityClassName",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/runtime-class",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, runtimeClassName: unconfined}
""",
        "spec.runtimeClassName",
        Reason.NOT_ALLOWED,
        {"allow": {"runtimeClasses": ["nvidia"]}},
    ),
    Row(
        "allow/env-from-a-secret-the-spec-does-not-name",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "hf://org/model", tokenSecretRef: {name: hf}}
  env: [{name: OMP_NUM_THREADS, valueFrom: {secretKeyRef: {name: other-team, key: token}}}]
""",
        "spec.env[0].valueFrom.secretKeyRef.name",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/env-from-an-unknown-source",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "hf://org/model"}
  env: [{name: OMP_NUM_THREADS, valueFrom: {fileKeyRef: {path: /etc/passwd, key: x}}}]
""",
        "spec.env[0].valueFrom",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-trust-remote-code",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--max-num-seqs=8", "--trust_remote_code"]}}
""",
        "spec.vllm.extraArgs[1]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/llamacpp-static-files",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "pvc://m/model.gguf"}, runtime: llamacpp, llamacpp: {extraArgs: ["--path", "/"]}}
""",
        "spec.llamacpp.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-flags-from-a-file",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--seed", "7", "--config", "/models/x/flags.yaml"]}}
""",
        "spec.vllm.extraArgs[2]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-dotted-lora-modules",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--lora-modules.name", "x", "--lora-modules.path", "/p"]}}
""",
        "spec.vllm.extraArgs[2]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-flag-the-operator-sets",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--max-lora-rank=256"]}}
""",
        "spec.vllm.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-stray-value",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--enforce-eager", "/models/other"]}}
""",
        "spec.vllm.extraArgs[1]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-dotted-form-of-a-plain-flag",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--max-num-seqs.x", "1"]}}
""",
        "spec.vllm.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-flag-without-its-value",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--max-num-seqs"]}}
""",
        "spec.vllm.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-switch-with-a-value",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--enforce-eager=1"]}}
""",
        "spec.vllm.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/vllm-generation-config-folder",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, vllm: {extraArgs: ["--generation-config", "/models/x"]}}
""",
        "spec.vllm.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/llamacpp-equals-form",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "pvc://m/model.gguf"}, runtime: llamacpp, llamacpp: {extraArgs: ["--batch-size=64"]}}
""",
        "spec.llamacpp.extraArgs[0]",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "spec/affinity-not-an-affinity",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  resources: {gpus: 1, gpuProduct: NVIDIA-H100-80GB-HBM3}
  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [x]}}
""",
        "spec.affinity",
        Reason.INVALID_SPEC,
    ),
    Row(
        "allow/s3-source-without-a-secret",
        FTM_HEAD
        + """metadata: {name: tuned}
spec: {baseModel: {uri: "pvc://models/base"}, adapter: {uri: "s3://bucket/a"}}
""",
        "spec.adapter.uri",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/output-to-an-s3-artifact-root-without-a-secret",
        QJ_HEAD
        + """metadata: {name: q}
spec: {source: {uri: "pvc://models/base"}, method: gguf}
""",
        "spec.output",
        Reason.NOT_ALLOWED,
        config={"artifactRoot": "s3://artifacts"},
    ),
    Row(
        "allow/env-name-loads-code",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, env: [{name: PYTHONPATH, value: /models/x}]}
""",
        "spec.env[0].name",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/env-replaces-the-operators",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, env: [{name: VLLM_API_KEY, value: ""}]}
""",
        "spec.env[0].name",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/env-value-from-two-sources",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "hf://org/model"}
  env: [{name: TZ, valueFrom: {fieldRef: {fieldPath: metadata.name}, configMapKeyRef: {name: c, key: k}}}]
""",
        "spec.env[0].valueFrom",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/env-secret-name-not-a-string",
        IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "hf://org/model"}
  envSecrets: [app]
  env: [{name: TZ, valueFrom: {secretKeyRef: {name: [app], key: k}}}]
""",
        "spec.env[0].valueFrom.secretKeyRef.name",
        Reason.NOT_ALLOWED,
    ),
    Row(
        "allow/env-configmap-ref-not-a-mapping",
        IS_HEAD
        + """metadata: {name: svc}
spec: {model: {uri: "hf://org/model"}, env: [{name: TZ, valueFrom: {configMapKeyRef: [c]}}]}
""",
        "spec.env[0].valueFrom.configMapKeyRef",
        Reason.NOT_ALLOWED,
    ),
]


# -- the operator side: the reconcilers against an in-memory API ------------------------------------------


class MemoryKube:
    """What a reconciler reads and writes, kept in memory (status patches recorded per object)."""

    def __init__(self, objs: list[dict[str, Any]]):
        self.objs = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objs}
        self.status: dict[tuple[str, str, str], dict[str, Any]] = {}

    def get(self, rtype: k.ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objs.get((rtype.kind, namespace or "", name))
        return copy.deepcopy(found) if found is not None else None

    def list(
        self, rtype: k.ResourceType, namespace: str | None, selector: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        def matches(o: dict[str, Any]) -> bool:
            got = o["metadata"].get("labels") or {}
            return all(got.get(key) == v for key, v in (selector or {}).items())

        return [
            copy.deepcopy(o)
            for (kind, ns, _), o in self.objs.items()
            if kind == rtype.kind and ns == namespace and matches(o)
        ]

    def apply(self, obj: dict[str, Any], field_manager: str = "") -> dict[str, Any]:
        self.objs[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        return obj

    def patch_status(
        self, rtype: k.ResourceType, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        self.status[(rtype.kind, namespace, name)] = status
        return status

    def delete(self, rtype: k.ResourceType, namespace: str | None, name: str, **_: Any) -> None:
        self.objs.pop((rtype.kind, namespace or "", name), None)

    def event(self, *_: Any, **__: Any) -> None:
        pass


def _docs(row: Row) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(row.docs) if d]


def _on_cluster(doc: dict[str, Any], i: int) -> dict[str, Any]:
    """The object as the API server holds it; one with a status is a Ready upstream of the current generation."""
    obj = copy.deepcopy(doc)
    meta = obj["metadata"]
    meta.setdefault("namespace", "default")
    meta.update(uid=f"uid-{i}", generation=1)
    if "status" in obj:
        ready = {
            "type": "Ready",
            "status": "True",
            "reason": "Succeeded",
            "message": "",
            "lastTransitionTime": "t",
        }
        obj["status"].update(observedGeneration=1, conditions=[ready])
    return obj


def operator_verdict(row: Row) -> dict[str, Any]:
    """The status the operator's reconciler writes for the row's subject."""
    objs = [_on_cluster(d, i) for i, d in enumerate(_docs(row))]
    kube = MemoryKube(objs)
    ctx = Context(kube=cast(k.Kube, kube), config=OperatorConfig.model_validate(row.config or {}))
    subject = objs[-1]
    RECONCILERS[subject["kind"]](ctx, copy.deepcopy(subject))
    return kube.status[(subject["kind"], "default", subject["metadata"]["name"])]


@contextmanager
def lines_run(files: set[str]) -> Iterator[set[tuple[str, int]]]:
    """The (file, line) pairs executed in `files` while the block runs."""
    seen: set[tuple[str, int]] = set()

    def trace(frame: FrameType, event: str, _: Any) -> Any:
        if frame.f_code.co_filename not in files:
            return None
        if event == "line":
            seen.add((frame.f_code.co_filename, frame.f_lineno))
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        yield seen
    finally:
        sys.settrace(previous)


def _adapter_index(field: str) -> int | None:
    prefix = "spec.lora.adapters["
    if not field.startswith(prefix) or "." in field[len(prefix) :]:
        return None
    return int(field[len(prefix) : field.index("]")])


def assert_operator_refuses(row: Row, status: dict[str, Any]) -> None:
    conds = {c["type"]: c for c in status.get("conditions") or []}
    index = _adapter_index(row.field)
    if row.reason == Reason.INCOMPATIBLE_ADAPTER and index is not None:
        # An adapter is refused alone: the service runs without it, and says which one and why.
        name = _docs(row)[-1]["spec"]["lora"]["adapters"][index]["name"]
        assert conds["AdaptersReady"]["status"] == "False"
        assert conds["AdaptersReady"]["reason"] == row.reason
        states = {a["name"]: a for a in status.get("adapters") or []}
        assert states[name]["state"] == "Failed", states
        return
    ready = conds["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", row.reason), ready
    assert row.field in ready["message"], ready


# -- the validate side -----------------------------------------------------------------------------------


def cli_refusal(
    command: str, row: Row, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[str]]:
    """Exit code of `tuneops <command> -f`, and the problem lines printed under the row's subject."""
    path = tmp_path / "row.yaml"
    path.write_text(row.docs)
    argv = [command, "-f", str(path)]
    if row.config is not None:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(row.config))
        argv += ["--config", str(config)]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.splitlines()
    subject = _docs(row)[-1]
    header = f"error: {path}#{len(_docs(row))}: {subject['kind']} {subject['metadata']['name']!r}:"
    assert header in err, err
    block = err[err.index(header) + 1 :]
    lines = []
    for line in block:
        if not line.startswith("  "):
            break
        lines.append(line.strip())
    return code, lines


def names_field(lines: list[str], field: str) -> bool:
    return any(line.startswith(f"{field}:") for line in lines)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_validate_refuses_what_the_operator_refuses(
    row: Row, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_operator_refuses(row, operator_verdict(row))
    for command in ("validate", "render"):
        code, lines = cli_refusal(command, row, tmp_path, capsys)
        assert code == 2, (command, lines)
        assert names_field(lines, row.field), (command, lines)


# What the operator serves, validate and render accept: the prediction is no stricter than the operator.
ACCEPTED = [
    Row(
        "adapter-on-s3-published-by-a-finetunedmodel",
        FTM_HEAD
        + """metadata: {name: tuned}
spec:
  baseModel: {uri: "pvc://models/base"}
  adapter: {uri: "s3://bucket/a", tokenSecretRef: {name: aws}}
  merge: {enabled: false}
status:
  artifact: {uri: "file:///store/tuned/0123456789abcdef", format: peft}
---
"""
        + IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {uri: "pvc://models/base"}
  resources: {gpus: 1}
  lora: {adapters: [{name: a, fineTunedModelRef: {name: tuned}}]}
""",
    ),
    Row(
        "llamacpp-on-a-gguf-quantizationjob",
        QJ_GGUF
        + "---\n"
        + IS_HEAD
        + "metadata: {name: svc}\nspec: {model: {quantizationJobRef: {name: q}}, runtime: llamacpp}\n",
    ),
    Row(
        "lora-on-an-awq-quantizationjob",
        QJ_AWQ
        + "---\n"
        + IS_HEAD
        + """metadata: {name: svc}
spec:
  model: {quantizationJobRef: {name: q}}
  resources: {gpus: 1}
  lora: {adapters: [{name: a, uri: "pvc://adapters/a"}]}
""",
    ),
    Row(
        "routing-with-the-operator-configs-endpoint-picker",
        IS_HEAD
        + "metadata: {name: svc}\nspec: {model: {uri: hf://org/model}, routing: {gateway: {name: inference-gateway}}}\n",
        config={"routing": {"endpointPicker": {"name": "shared-epp"}}},
    ),
]


@pytest.mark.parametrize("row", ACCEPTED, ids=[r.id for r in ACCEPTED])
def test_validate_accepts_what_the_operator_serves(
    row: Row, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = operator_verdict(row)
    assert not {c["reason"] for c in status["conditions"]} & REFUSALS, status["conditions"]
    path = tmp_path / "row.yaml"
    path.write_text(row.docs)
    argv = ["-f", str(path)]
    if row.config is not None:
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(row.config))
        argv += ["--config", str(config)]
    for command in ("validate", "render"):
        assert main([command, *argv]) == 0, capsys.readouterr().err


# -- every refusal in the code has a row or a reason it cannot have one -----------------------------------


@dataclass(frozen=True)
class Site:
    """A statement that refuses: where it is and its text."""

    file: Path
    function: str
    first: int
    last: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(PKG)}:{self.first} ({self.function})"


def _refuses(call: ast.Call, function: str) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name in REFUSING_CALLS:
        return True
    if name == "append" and isinstance(func, ast.Attribute) and function.endswith("_problems"):
        return True  # functions named *_problems collect refusal messages
    args = [*call.args, *(kw.value for kw in call.keywords)]
    return any(
        isinstance(a, ast.Attribute)
        and isinstance(a.value, ast.Name)
        and a.value.id == "Reason"
        and getattr(Reason, a.attr, None) in REFUSALS
        for a in args
    )


COMPOUND = (
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.ClassDef,
    ast.If,
    ast.For,
    ast.While,
    ast.With,
    ast.Try,
)


def refusal_sites() -> list[Site]:
    sites = []
    for path in SCANNED:
        source = path.read_text()
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if not isinstance(node, ast.stmt) or isinstance(node, COMPOUND):
                continue
            function = _innermost(node, tree)
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)]
            if any(_refuses(c, function) for c in calls):
                text = ast.get_source_segment(source, node) or ""
                sites.append(Site(path, function, node.lineno, node.end_lineno or node.lineno, text))
    return sites


def _innermost(stmt: ast.stmt, tree: ast.Module) -> str:
    """The name of the innermost function around a statement ('' at module level)."""
    around = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.lineno <= stmt.lineno <= (node.end_lineno or node.lineno)
    ]
    return max(around, key=lambda f: f.lineno).name if around else ""


def runtime_only(site: Site) -> str | None:
    rel = str(site.file.relative_to(PKG))
    for (file, function, text), why in RUNTIME_ONLY.items():
        if file == rel and function == site.function and text in site.text:
            return why
    return None


def test_every_refusal_has_a_row() -> None:
    files = {str(p) for p in SCANNED}
    hit: set[tuple[str, int]] = set()
    for row in ROWS:
        with lines_run(files) as seen:
            operator_verdict(row)
        hit |= seen
    sites = refusal_sites()
    assert sites, "no refusals found: the scan is broken"
    missing = [
        s.where
        for s in sites
        if runtime_only(s) is None and not any((str(s.file), n) in hit for n in range(s.first, s.last + 1))
    ]
    assert not missing, f"refusals with no row here and not listed as runtime-only: {missing}"
    stale = [key for key in RUNTIME_ONLY if not any(runtime_only(s) == RUNTIME_ONLY[key] for s in sites)]
    assert not stale, f"RUNTIME_ONLY entries that match no refusal in the code: {stale}"


def test_a_reference_outside_the_files_is_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        IS_HEAD + "metadata: {name: svc}\nspec: {model: {quantizationJobRef: {name: elsewhere}}}\n"
    )
    assert main(["validate", "-f", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {path}#1: InferenceService svc\n"
    assert err == (
        f"note: {path}#1: InferenceService 'svc': not checked: QuantizationJob/elsewhere "
        "(spec.model.quantizationJobRef) not in the given files\n"
    )


def test_cross_namespace_references_follow_the_operator_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = next(r for r in ROWS if r.id == "ref/served-model-in-another-namespace")
    path = tmp_path / "svc.yaml"
    path.write_text(row.docs)
    config = tmp_path / "config.yaml"
    config.write_text("allowCrossNamespaceRefs: true\n")
    assert main(["validate", "-f", str(path), "--config", str(config)]) == 0
    assert "not checked: QuantizationJob/q" in capsys.readouterr().err
