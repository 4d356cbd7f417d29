"""What the operator would create for a set of resources, resolved offline (for `tuneops render` and reviews).

References between resources in the same input are followed to the URIs the referenced resource will write,
and the operator's own refusals (tuneops.validation) are run on what they predict.
A reference to something not in the input resolves to the operator's default output location for that name.
Digests and adapter facts are unknown before the Jobs run, so they are left out; owner UIDs are derived
from kind, namespace and name (the API server assigns the real ones, and the operator uses those).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from tuneops import API_VERSION
from tuneops.api import KINDS, parse_spec
from tuneops.api.common import ObjectRef
from tuneops.api.conditions import Reason
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.loraadapter import LoRAAdapterSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.artifacts import default_output_uri
from tuneops.render.finetunedmodel import base_uri, merge_output_uri, render_finetunedmodel
from tuneops.render.quantizationjob import artifact_format, quantize_output_uri, render_quantizationjob
from tuneops.render.serving import render_inferenceservice
from tuneops.render.serving.types import ServingRender, served_model_name
from tuneops.render.types import Manifest, Owner, Problem, ResolvedAdapter, ResolvedModel
from tuneops.validation import attach
from tuneops.validation.cluster import cluster_checks
from tuneops.validation.policy import check_pod_policy
from tuneops.validation.quantization import AdapterOnly, check_quantization_source
from tuneops.validation.references import Reference, check_reference, check_routing, references, uri_model
from tuneops.validation.serving import check_inferenceservice, no_merged_model

_UID_NAMESPACE = uuid.UUID("6f1c2a4e-8d1b-4c59-9a57-7e0b7d1c3a10")


@dataclass(frozen=True)
class Resource:
    """A parsed tuneops resource from the input."""

    kind: str
    name: str
    namespace: str
    spec: BaseModel

    @property
    def owner(self) -> Owner:
        uid = str(uuid.uuid5(_UID_NAMESPACE, f"{self.kind}/{self.namespace}/{self.name}"))
        return Owner(API_VERSION, self.kind, self.name, self.namespace, uid)


def parse_documents(docs: Iterable[Mapping[str, Any]], namespace: str = "default") -> list[Resource]:
    """The tuneops resources among `docs` (other kinds are skipped), each spec validated."""
    return [r for doc in docs if (r := parse_document(doc, namespace)) is not None]


def parse_document(doc: Mapping[str, Any], namespace: str = "default") -> Resource | None:
    """The tuneops resource `doc` holds (None for other kinds); raises SpecError when its spec is invalid."""
    kind = str(doc.get("kind", ""))
    if kind not in KINDS:
        return None
    meta = doc.get("metadata") or {}
    spec = parse_spec(kind, dict(doc))
    return Resource(kind, str(meta.get("name", "")), str(meta.get("namespace") or namespace), spec)


class Resolver:
    """Follows references the way the operator will once the referenced resources are Ready."""

    def __init__(self, resources: Iterable[Resource], config: OperatorConfig):
        self.config = config
        self.by_key = {(r.kind, r.namespace, r.name): r for r in resources}

    def _find(self, kind: str, ref: ObjectRef, namespace: str) -> Resource | None:
        return self.by_key.get((kind, ref.namespace or namespace, ref.name))

    def attach_verdict(self, resource: Resource, spec: LoRAAdapterSpec) -> list[Problem]:
        """What the service (when it is in the input) would answer this LoRAAdapter, judged with the other
        LoRAAdapters of the input that ask for it, in input order (the cluster goes by age). A Selector rule needs
        the namespace's labels, which only the cluster has: not refused here."""
        ref = ObjectRef(name=spec.service_ref.name, namespace=spec.service_ref.namespace)
        service = self._find("InferenceService", ref, resource.namespace)
        if service is None or not isinstance(service.spec, InferenceServiceSpec):
            return []
        svc_spec = service.spec
        askers = [
            {"metadata": {"name": r.name, "namespace": r.namespace, "creationTimestamp": f"{i:08d}"},
             "spec": r.spec.model_dump(by_alias=True, exclude_none=True, mode="json")}
            for i, r in enumerate(self.by_key.values())
            if isinstance(r.spec, LoRAAdapterSpec)
            and (r.spec.service_ref.namespace or r.namespace, r.spec.service_ref.name) == (service.namespace, service.name)
        ]  # fmt: skip
        owner = service.owner
        taken = {
            served_model_name(svc_spec, owner),
            *(a.name for a in (svc_spec.lora.adapters if svc_spec.lora else [])),
        }
        verdicts = attach.decide(service.namespace, svc_spec, askers, lambda _ns: None, taken)
        mine = next((v for v in verdicts if v.key == f"{resource.namespace}/{resource.name}"), None)
        if mine is None or mine.accepted or mine.labels_unknown:
            return []
        return [Problem(mine.reason, "spec.serviceRef", mine.message)]

    def known(self, reference: Reference, namespace: str) -> bool:
        return self._find(reference.kind, reference.ref, namespace) is not None

    def _default(self, ref: ObjectRef, namespace: str, kind: str) -> str:
        owner = Owner(API_VERSION, kind, ref.name, ref.namespace or namespace, "")
        return default_output_uri(self.config, owner)

    def finetunedmodel(self, ref: ObjectRef, namespace: str) -> tuple[ResolvedModel, ResolvedAdapter | None]:
        """The served model of a FineTunedModel: its merged output, or its base plus its adapter."""
        found = self._find("FineTunedModel", ref, namespace)
        if found is None:
            return ResolvedModel(uri=self._default(ref, namespace, "FineTunedModel")), None
        spec = found.spec
        assert isinstance(spec, FineTunedModelSpec)
        if spec.merge.enabled:
            return ResolvedModel(uri=merge_output_uri(spec, found.owner, self.config)), None
        adapter = self.adapter(ref, namespace, found.name)
        return ResolvedModel(uri=base_uri(spec), token_secret=spec.base_model.token_secret_ref), adapter

    def adapter(self, ref: ObjectRef, namespace: str, name: str) -> ResolvedAdapter:
        """A FineTunedModel's adapter where the service loads it: an unmerged one from the copy its inspect Job
        publishes under its output (in a folder named after the adapter's digest, unknown here), as the
        operator does; a merged one from its adapter URI."""
        found = self._find("FineTunedModel", ref, namespace)
        if found is None:
            return ResolvedAdapter(name=name, uri=self._default(ref, namespace, "FineTunedModel"))
        spec = found.spec
        assert isinstance(spec, FineTunedModelSpec)
        if spec.merge.enabled:
            return ResolvedAdapter(name=name, uri=spec.adapter.uri)
        return ResolvedAdapter(name=name, uri=merge_output_uri(spec, found.owner, self.config))

    def quantizationjob(self, ref: ObjectRef, namespace: str) -> ResolvedModel:
        found = self._find("QuantizationJob", ref, namespace)
        if found is None:
            return ResolvedModel(uri=self._default(ref, namespace, "QuantizationJob"))
        spec = found.spec
        assert isinstance(spec, QuantizationJobSpec)
        uri = quantize_output_uri(spec, found.owner, self.config)
        if spec.method == "gguf":
            # One file per quantization type, in spec order, each named after its type.
            files = tuple(f"{found.name}-{t}.gguf" for t in spec.gguf_settings().quant_types)
            return ResolvedModel(uri=uri, format="gguf", files=files)
        return ResolvedModel(uri=uri, format=artifact_format(spec))

    def quantization_source(self, spec: QuantizationJobSpec, namespace: str) -> ResolvedModel:
        if spec.source.fine_tuned_model_ref is not None:
            model, _ = self.finetunedmodel(spec.source.fine_tuned_model_ref, namespace)
            return model
        assert spec.source.uri is not None
        return ResolvedModel(uri=spec.source.uri, token_secret=spec.source.token_secret_ref)

    def served(
        self, spec: InferenceServiceSpec, namespace: str, owner: Owner | None = None
    ) -> tuple[ResolvedModel, list[ResolvedAdapter]]:
        adapters: list[ResolvedAdapter] = []
        src = spec.model
        if src.fine_tuned_model_ref is not None:
            model, own = self.finetunedmodel(src.fine_tuned_model_ref, namespace)
            if own is not None:
                adapters.append(own)
            elif src.serve == "lora" and owner is not None:
                # the LoRA form of a merged model, as the operator serves it (auto: merged until measured)
                found = self._find("FineTunedModel", src.fine_tuned_model_ref, namespace)
                if found is not None:
                    assert isinstance(found.spec, FineTunedModelSpec)
                    name = served_model_name(spec, owner)
                    adapters.append(ResolvedAdapter(name=name, uri=found.spec.adapter.uri))
                    model = ResolvedModel(uri=base_uri(found.spec), base_name=f"{name}-base",
                                          token_secret=found.spec.base_model.token_secret_ref)  # fmt: skip
        elif src.quantization_job_ref is not None:
            model = self.quantizationjob(src.quantization_job_ref, namespace)
        else:
            model = uri_model(spec)
        for a in spec.lora.adapters if spec.lora else []:
            if a.fine_tuned_model_ref is not None:
                adapters.append(self.adapter(a.fine_tuned_model_ref, namespace, a.name))
            else:
                assert a.uri is not None
                adapters.append(ResolvedAdapter(name=a.name, uri=a.uri))
        return model, adapters

    def serve_problems(self, spec: InferenceServiceSpec, namespace: str) -> list[Problem]:
        """model.serve merged of a FineTunedModel in the input that is not merged."""
        ref = spec.model.fine_tuned_model_ref
        if spec.model.serve != "merged" or ref is None:
            return []
        found = self._find("FineTunedModel", ref, namespace)
        if found is None or not isinstance(found.spec, FineTunedModelSpec) or found.spec.merge.enabled:
            return []
        return [Problem(Reason.INVALID_SPEC, "spec.model.serve", no_merged_model(found.name))]

    def quantization_input(
        self, spec: QuantizationJobSpec, namespace: str
    ) -> ResolvedModel | AdapterOnly | None:
        """What the QuantizationJob will read once its source is Ready (None: not in the input)."""
        ref = spec.source.fine_tuned_model_ref
        if ref is None:
            return self.quantization_source(spec, namespace)
        found = self._find("FineTunedModel", ref, namespace)
        if found is None:
            return None
        assert isinstance(found.spec, FineTunedModelSpec)
        return (
            self.quantization_source(spec, namespace) if found.spec.merge.enabled else AdapterOnly(found.name)
        )

    def known_sources(
        self, spec: InferenceServiceSpec, namespace: str
    ) -> tuple[ResolvedModel | None, list[ResolvedAdapter]]:
        """What the service will serve, as far as the input tells (model None: its source is not in the input;
        adapters whose FineTunedModel is not in the input are left out)."""
        served, adapters = self.served(spec, namespace)
        refs = {r.field: r for r in references(spec)}
        source = refs.get("spec.model.fineTunedModelRef") or refs.get("spec.model.quantizationJobRef")
        model = None if source is not None and not self.known(source, namespace) else served
        unknown = {
            a.name
            for a in (spec.lora.adapters if spec.lora else [])
            if a.fine_tuned_model_ref is not None
            and self._find("FineTunedModel", a.fine_tuned_model_ref, namespace) is None
        }
        known = [a for a in adapters if a.name not in unknown]
        return model, known


@dataclass(frozen=True)
class Findings:
    """What checking one resource against the others in the input found: refusals, and what was not checked
    (`notes`: references to resources not in the input; `unchecked`: what only the cluster can tell)."""

    problems: list[Problem]
    notes: list[str]
    unchecked: list[str] = field(default_factory=list)


def check_resource(resource: Resource, resolver: Resolver) -> Findings:
    """The operator's refusals of `resource` that the input can tell already, with its references followed
    within the input; a reference to something not in the input is noted, and what depends on it skipped."""
    spec, ns = resource.spec, resource.namespace
    refs = references(spec)
    problems = [
        p
        for r in refs
        if (
            p := check_reference(
                r, kind=resource.kind, namespace=ns, name=resource.name, config=resolver.config
            )
        )
    ]
    problems += check_pod_policy(spec, resolver.config)
    problems += check_routing(spec, resolver.config)
    refused = {p.field for p in problems}
    notes = [
        f"not checked: {r.label} ({r.field}) not in the given files"
        for r in refs
        if r.field not in refused and not resolver.known(r, ns)
    ]
    if isinstance(spec, QuantizationJobSpec):
        source = resolver.quantization_input(spec, ns)
        if source is not None:
            problems += check_quantization_source(spec, source)
    elif isinstance(spec, InferenceServiceSpec):
        problems += resolver.serve_problems(spec, ns)
        model, adapters = resolver.known_sources(spec, ns)
        problems += check_inferenceservice(spec, model=model, adapters=adapters)
    elif isinstance(spec, LoRAAdapterSpec):
        problems += resolver.attach_verdict(resource, spec)
    return Findings(problems, notes, cluster_checks(spec))


def render_resource(resource: Resource, resolver: Resolver) -> list[Manifest] | ServingRender:
    config = resolver.config
    spec = resource.spec
    if isinstance(spec, FineTunedModelSpec):
        return render_finetunedmodel(spec, resource.owner, config)
    if isinstance(spec, QuantizationJobSpec):
        source = resolver.quantization_source(spec, resource.namespace)
        return render_quantizationjob(spec, resource.owner, config, source=source)
    assert isinstance(spec, InferenceServiceSpec)
    model, adapters = resolver.served(spec, resource.namespace, resource.owner)
    return render_inferenceservice(spec, resource.owner, config, model=model, adapters=adapters)


def render_documents(
    docs: Iterable[Mapping[str, Any]], config: OperatorConfig, *, namespace: str | None = None
) -> list[Manifest]:
    """Every manifest the operator would create for the tuneops resources in `docs`, in input order."""
    resources = parse_documents(docs, namespace or "default")
    resolver = Resolver(resources, config)
    out: list[Manifest] = []
    for r in resources:
        rendered = render_resource(r, resolver)
        out += list(rendered.manifests) if isinstance(rendered, ServingRender) else rendered
    return out
