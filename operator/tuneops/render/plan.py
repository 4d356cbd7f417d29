"""What the operator would create for a set of resources, resolved offline (for `tuneops render` and reviews).

References between resources in the same input are followed to the URIs the referenced resource will write.
A reference to something not in the input resolves to the operator's default output location for that name.
Digests and adapter facts are unknown before the Jobs run, so they are left out; owner UIDs are derived
from kind, namespace and name (the API server assigns the real ones, and the operator uses those).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from tuneops import API_VERSION
from tuneops.api import KINDS, parse_spec
from tuneops.api.common import ObjectRef
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.artifacts import default_output_uri
from tuneops.render.finetunedmodel import base_uri, merge_output_uri, render_finetunedmodel
from tuneops.render.quantizationjob import artifact_format, quantize_output_uri, render_quantizationjob
from tuneops.render.serving import render_inferenceservice
from tuneops.render.serving.types import ServingRender
from tuneops.render.types import Manifest, ModelFormat, Owner, ResolvedAdapter, ResolvedModel

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
    out = []
    for doc in docs:
        kind = str(doc.get("kind", ""))
        if kind not in KINDS:
            continue
        meta = doc.get("metadata") or {}
        spec = parse_spec(kind, dict(doc))
        out.append(Resource(kind, str(meta.get("name", "")), str(meta.get("namespace") or namespace), spec))
    return out


class Resolver:
    """Follows references the way the operator will once the referenced resources are Ready."""

    def __init__(self, resources: Iterable[Resource], config: OperatorConfig):
        self.config = config
        self.by_key = {(r.kind, r.namespace, r.name): r for r in resources}

    def _find(self, kind: str, ref: ObjectRef, namespace: str) -> Resource | None:
        return self.by_key.get((kind, ref.namespace or namespace, ref.name))

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
        adapter = ResolvedAdapter(name=found.name, uri=spec.adapter.uri)
        return ResolvedModel(uri=base_uri(spec), token_secret=spec.base_model.token_secret_ref), adapter

    def adapter(self, ref: ObjectRef, namespace: str, name: str) -> ResolvedAdapter:
        found = self._find("FineTunedModel", ref, namespace)
        if found is None:
            return ResolvedAdapter(name=name, uri=self._default(ref, namespace, "FineTunedModel"))
        spec = found.spec
        assert isinstance(spec, FineTunedModelSpec)
        return ResolvedAdapter(name=name, uri=spec.adapter.uri)

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
        self, spec: InferenceServiceSpec, namespace: str
    ) -> tuple[ResolvedModel, list[ResolvedAdapter]]:
        adapters: list[ResolvedAdapter] = []
        src = spec.model
        if src.fine_tuned_model_ref is not None:
            model, own = self.finetunedmodel(src.fine_tuned_model_ref, namespace)
            if own is not None:
                adapters.append(own)
        elif src.quantization_job_ref is not None:
            model = self.quantizationjob(src.quantization_job_ref, namespace)
        else:
            assert src.uri is not None
            fmt: ModelFormat = "gguf" if spec.runtime == "llamacpp" else "hf"
            model = ResolvedModel(uri=src.uri, format=fmt, token_secret=src.token_secret_ref)
        for a in spec.lora.adapters if spec.lora else []:
            if a.fine_tuned_model_ref is not None:
                adapters.append(self.adapter(a.fine_tuned_model_ref, namespace, a.name))
            else:
                assert a.uri is not None
                adapters.append(ResolvedAdapter(name=a.name, uri=a.uri))
        return model, adapters


def render_resource(resource: Resource, resolver: Resolver) -> list[Manifest] | ServingRender:
    config = resolver.config
    spec = resource.spec
    if isinstance(spec, FineTunedModelSpec):
        return render_finetunedmodel(spec, resource.owner, config)
    if isinstance(spec, QuantizationJobSpec):
        source = resolver.quantization_source(spec, resource.namespace)
        return render_quantizationjob(spec, resource.owner, config, source=source)
    assert isinstance(spec, InferenceServiceSpec)
    model, adapters = resolver.served(spec, resource.namespace)
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
