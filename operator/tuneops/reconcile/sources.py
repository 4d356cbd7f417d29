"""What an InferenceService serves: its model and adapters followed to Ready artifacts, and what is refused."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from typing import Any

from tuneops.adapters import api_key_problem
from tuneops.api import FINETUNEDMODEL, QUANTIZATIONJOB, SpecError
from tuneops.api.common import ObjectRef
from tuneops.api.conditions import Reason
from tuneops.api.finetunedmodel import FineTunedModelSpec, FineTunedModelStatus
from tuneops.api.inferenceservice import InferenceServiceSpec, ServedForm
from tuneops.kube import client as k
from tuneops.reconcile import attach
from tuneops.reconcile.attach import Verdict
from tuneops.reconcile.base import Context, Invalid, Waiting, owner_of
from tuneops.reconcile.common import resolve_ref
from tuneops.render.finetunedmodel import base_uri, merge_output_uri
from tuneops.render.serving.types import served_model_name
from tuneops.render.types import Problem, ResolvedAdapter, ResolvedModel, model_format
from tuneops.validation.references import uri_model
from tuneops.validation.serving import check_inferenceservice, no_merged_model

_ADAPTER_FIELD = re.compile(r"^spec\.lora\.adapters\[(\d+)\]")


@dataclass(frozen=True)
class Sources:
    """The service's inputs as found this pass."""

    model: ResolvedModel
    adapters: list[ResolvedAdapter]  # every adapter whose source is Ready (refused ones included)
    pending: dict[str, str]  # adapter name -> why it is not served yet
    sources: list[str]  # every URI an adapter of the spec may be loaded from (for the Pods' volumes)
    refused: dict[str, str] = field(default_factory=dict)  # adapter name -> why vLLM would refuse it
    api_key: str | None = None
    attached: list[Verdict] = field(default_factory=list)  # every LoRAAdapter that asks, accepted or refused
    form: ServedForm | None = None  # a FineTunedModel's: merged, or its adapter as LoRA, and why

    @property
    def servable(self) -> list[ResolvedAdapter]:
        # An incompatible adapter is refused alone; the base model and the other adapters are still served.
        return [a for a in self.adapters if a.name not in self.refused]


def resolve(ctx: Context, obj: dict[str, Any], spec: InferenceServiceSpec) -> Sources:
    """Follow the model reference to a Ready artifact and check what can be served. Waiting while the model's
    source is not Ready; Invalid when the service cannot work as written. Adapters whose source is not Ready
    yet, or that vLLM would refuse, are left out (and reported) rather than holding the whole service back."""
    model, adapters, form = _model(ctx, obj, spec)
    more, pending = _adapters(ctx, obj, spec)
    adapters += more
    # LoRAAdapters the service accepts are served like its own; vLLM's checks of the spec's adapters (by index)
    # are not theirs, so they join the list after those.
    attached: list[Verdict] = []
    if spec.lora is not None and spec.runtime == "vllm":
        taken = {served_model_name(spec, owner_of(obj)), *(a.name for a in adapters), *pending}
        if model.base_name:
            taken.add(model.base_name)
        attached = attach.service_decision(ctx.kube, obj, spec, taken)
    accepted = [v.adapter for v in attached if v.adapter is not None]
    # The key is read only to call the Pods' runtime LoRA API; the Pods get it from the kubelet (env valueFrom).
    calls_pods = spec.runtime == "vllm" and bool((spec.lora and spec.lora.adapters) or adapters or accepted)
    api_key = _api_key(ctx, obj["metadata"]["namespace"], spec) if calls_pods else None
    problems = check_inferenceservice(spec, model=model, adapters=adapters)
    refused, service_problems = _split(spec, adapters, problems)
    if service_problems:
        raise Invalid("; ".join(str(p) for p in service_problems), service_problems[0].reason)
    adapters += accepted
    return Sources(
        model, adapters, pending, adapter_sources(ctx, obj, spec), refused, api_key, attached, form
    )


def served_form(
    serve: str | None, ftm: str, spec: FineTunedModelSpec, status: FineTunedModelStatus
) -> ServedForm:
    """Which form of FineTunedModel `ftm` a service serves (model.serve), with the reason people read in status."""
    unmerged = status.artifact is None or status.artifact.format == "peft"
    if unmerged:
        if serve == "merged":
            raise Invalid(f"spec.model.serve: {no_merged_model(ftm)}")
        return ServedForm(serve="lora", reason=f"FineTunedModel {ftm} is not merged: its adapter on the base")
    if serve in (None, "merged"):
        return ServedForm(
            serve="merged", reason="model.serve is " + (serve or "unset") + ": the merged model"
        )
    if serve == "lora":
        return ServedForm(
            serve="lora", reason="model.serve is lora: the base with the adapter through the LoRA path"
        )
    bench = status.benchmark
    if bench is None or bench.recommendation is None:
        asked = spec.benchmark is not None and spec.benchmark.enabled
        why = (
            "its benchmark has not finished"
            if asked
            else "it has no benchmark (set its spec.benchmark.enabled)"
        )
        return ServedForm(serve="merged", reason=f"model.serve is auto and FineTunedModel {ftm} recommends nothing "
                          f"yet ({why}): the merged model until it does")  # fmt: skip
    return ServedForm(serve=bench.recommendation, reason=f"model.serve is auto; FineTunedModel {ftm}'s benchmark: "
                      f"{bench.reason or bench.recommendation}")  # fmt: skip


def _model(
    ctx: Context, obj: dict[str, Any], spec: InferenceServiceSpec
) -> tuple[ResolvedModel, list[ResolvedAdapter], ServedForm | None]:
    """The model to serve, the adapter on top of it when a FineTunedModel is served as LoRA, and which form."""
    src = spec.model
    if src.uri is not None:
        return uri_model(spec), [], None
    if src.fine_tuned_model_ref is not None:
        ref = src.fine_tuned_model_ref
        fspec, fstatus = _ftm(ctx, obj, ref, "spec.model.fineTunedModelRef")
        base_name = fstatus.adapter.base_model_name if fstatus.adapter else None
        form = served_form(src.serve, ref.name, fspec, fstatus)
        if form.serve == "lora":
            # Unset serve on an unmerged FineTunedModel: the adapter under the FineTunedModel's name, as always.
            # Asked for (lora, auto): the adapter takes the service's served name and the base steps aside, so
            # clients use one name in either form.
            name = served_model_name(spec, owner_of(obj))
            named = src.serve is not None
            base = ResolvedModel(uri=base_uri(fspec), base_model_name=base_name,
                                 token_secret=fspec.base_model.token_secret_ref,
                                 base_name=f"{name}-base" if named else None)  # fmt: skip
            return base, [_adapter_from_ftm(name if named else ref.name, fspec, fstatus)], form
        artifact = fstatus.artifact
        assert artifact is not None  # served_form: merged only with a merged artifact
        merged = ResolvedModel(uri=artifact.uri, digest=artifact.digest, format=model_format(artifact.format),
                               base_model_name=base_name, size_bytes=artifact.size_bytes)  # fmt: skip
        return merged, [], form
    assert src.quantization_job_ref is not None  # the model validates exactly one
    target = resolve_ref(
        ctx, obj, src.quantization_job_ref, "QuantizationJob", "spec.model.quantizationJobRef"
    )
    qstatus = QUANTIZATIONJOB.parse_status(target.get("status"))
    if qstatus.artifact is None:
        raise Waiting(f"QuantizationJob {target['metadata']['name']} has no artifact yet")
    artifact = qstatus.artifact
    quantized = ResolvedModel(uri=artifact.uri, digest=artifact.digest, format=model_format(artifact.format),
                              files=tuple(artifact.files or ()), size_bytes=artifact.size_bytes)  # fmt: skip
    return quantized, [], None


def _adapters(
    ctx: Context, obj: dict[str, Any], spec: InferenceServiceSpec
) -> tuple[list[ResolvedAdapter], dict[str, str]]:
    adapters: list[ResolvedAdapter] = []
    pending: dict[str, str] = {}
    for i, a in enumerate(spec.lora.adapters if spec.lora else []):
        if a.uri is not None:
            adapters.append(
                ResolvedAdapter(name=a.name, uri=a.uri, digest=a.digest, token_secret=a.token_secret_ref)
            )
            continue
        assert a.fine_tuned_model_ref is not None  # the model validates exactly one
        try:
            fspec, fstatus = _ftm(
                ctx, obj, a.fine_tuned_model_ref, f"spec.lora.adapters[{i}].fineTunedModelRef"
            )
        except Waiting as w:
            # A new version is being inspected (or was refused): keep serving the last good one.
            previous = _last_good_adapter(ctx, obj, a.name, a.fine_tuned_model_ref)
            if previous is None:
                pending[a.name] = w.message
            else:
                adapters.append(previous)
            continue
        adapters.append(_adapter_from_ftm(a.name, fspec, fstatus))
    return adapters, pending


def _split(
    spec: InferenceServiceSpec, adapters: list[ResolvedAdapter], problems: list[Problem]
) -> tuple[dict[str, str], list[Problem]]:
    """Problems of one adapter (refused alone, by name) apart from those of the service itself."""
    names = [a.name for a in (spec.lora.adapters if spec.lora else [])]
    refused: dict[str, str] = {}
    service: list[Problem] = []
    for p in problems:
        m = _ADAPTER_FIELD.match(p.field)
        if p.reason == Reason.INCOMPATIBLE_ADAPTER and m and int(m.group(1)) < len(names):
            refused.setdefault(names[int(m.group(1))], p.message)
        elif p.reason == Reason.INCOMPATIBLE_ADAPTER and p.field.startswith("spec.lora.adapters"):
            refused.setdefault(adapters[0].name if adapters else "?", p.message)
        else:
            service.append(p)
    return refused, service


def _ftm(
    ctx: Context, obj: dict[str, Any], ref: ObjectRef, field: str
) -> tuple[FineTunedModelSpec, FineTunedModelStatus]:
    target = resolve_ref(ctx, obj, ref, "FineTunedModel", field)
    return FINETUNEDMODEL.parse_spec(target), FINETUNEDMODEL.parse_status(target.get("status"))


def _adapter_from_ftm(name: str, spec: FineTunedModelSpec, status: FineTunedModelStatus) -> ResolvedAdapter:
    facts = status.adapter
    # An unmerged FineTunedModel publishes its adapter at a content-addressed path: serve that copy.
    published = (
        status.artifact.uri if status.artifact is not None and status.artifact.format == "peft" else None
    )
    return ResolvedAdapter(
        name=name,
        uri=published or spec.adapter.uri,
        digest=status.adapter_digest,
        rank=(facts.max_rank or facts.rank) if facts else None,
        base_model_name=facts.base_model_name if facts else None,
        use_dora=bool(facts.use_dora) if facts else False,
        modules_to_save=tuple(facts.modules_to_save or ()) if facts else (),
    )


def _last_good_adapter(
    ctx: Context, obj: dict[str, Any], name: str, ref: ObjectRef
) -> ResolvedAdapter | None:
    """The adapter version a FineTunedModel published last, while it is not Ready (re-inspecting, or a new
    version was refused): its published copy is intact, so the service keeps it rather than dropping it."""
    ns = ref.namespace or obj["metadata"]["namespace"]
    if ns != obj["metadata"]["namespace"] and not ctx.config.allow_cross_namespace_refs:
        return None
    target = ctx.kube.get(k.FINETUNEDMODEL, ns, ref.name)
    if target is None:
        return None
    status = FINETUNEDMODEL.parse_status(target.get("status"))
    if status.artifact is None or status.artifact.format != "peft" or status.adapter is None:
        return None
    try:
        return _adapter_from_ftm(name, FINETUNEDMODEL.parse_spec(target), status)
    except SpecError:
        return None


def adapter_sources(ctx: Context, obj: dict[str, Any], spec: InferenceServiceSpec) -> list[str]:
    """Where each listed adapter is, or will be published, whether its FineTunedModel is Ready or not."""
    out: set[str] = set()
    for a in spec.lora.adapters if spec.lora else []:
        if a.uri is not None:
            out.add(a.uri)
            continue
        assert a.fine_tuned_model_ref is not None  # the model validates exactly one
        ns = a.fine_tuned_model_ref.namespace or obj["metadata"]["namespace"]
        target = ctx.kube.get(k.FINETUNEDMODEL, ns, a.fine_tuned_model_ref.name)
        if target is None:
            continue
        try:
            fspec = FINETUNEDMODEL.parse_spec(target)
        except SpecError:
            continue
        out.update({fspec.adapter.uri, merge_output_uri(fspec, owner_of(target), ctx.config)})
    return sorted(out)


def _api_key(ctx: Context, ns: str, spec: InferenceServiceSpec) -> str | None:
    # A Secret that cannot be read heals without a spec change (RBAC granted, Secret created): it is reported
    # as SecretUnreadable and looked at again, like a source that is not Ready yet.
    ref = spec.api_key_secret_ref
    if ref is None:
        return None
    try:
        secret = ctx.kube.get(k.SECRET, ns, ref.name)
    except k.ApiError as err:
        if err.status != 403:
            raise
        raise Waiting(
            f"spec.apiKeySecretRef: the operator may not read Secret {ns}/{ref.name} (HTTP 403), which it needs "
            "to call the Pods' LoRA API with the key: install the chart with rbac.readSecrets=true (get on Secrets "
            "where the operator works)",
            Reason.SECRET_UNREADABLE,
        ) from err
    if secret is None:
        raise Waiting(
            f"spec.apiKeySecretRef: Secret {ns}/{ref.name} does not exist (the operator needs its key to call the "
            "Pods' runtime LoRA API)",
            Reason.SECRET_UNREADABLE,
        )
    raw = (secret.get("data") or {}).get(ref.key)
    if raw is None:
        raise Invalid(f"spec.apiKeySecretRef: Secret {ref.name!r} has no key {ref.key!r}")
    key = base64.b64decode(raw).decode("utf-8", errors="replace")
    problem = api_key_problem(key)
    if problem:
        raise Invalid(f"spec.apiKeySecretRef: Secret {ref.name!r} key {ref.key!r}: {problem}")
    return key
