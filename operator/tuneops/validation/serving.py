"""What can be found wrong with an InferenceService before anything starts, as condition reasons and fields."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tuneops.api.common import fetched_by_loader
from tuneops.api.conditions import Reason
from tuneops.api.inferenceservice import InferenceServiceSpec, LoraSpec
from tuneops.render.artifacts import gguf_file
from tuneops.render.serving.types import effective_lora
from tuneops.render.types import Problem, ResolvedAdapter, ResolvedModel
from tuneops.render.volumes import parse

# vLLM serves adapters whose modules_to_save is only a classification head; anything else needs a merge.
VLLM_MODULES_TO_SAVE = frozenset({"classifier", "score"})

Report = Callable[[str, str], None]


def _model_id(name: str) -> str:
    # Adapter configs record the base as whatever path the trainer used ("/data/Mistral-7B-v0.1",
    # "mistralai/Mistral-7B-v0.1"); the last path segment is what both spellings share.
    return parse(name.strip()).name.lower()


def check_inferenceservice(
    spec: InferenceServiceSpec, *, model: ResolvedModel | None, adapters: Sequence[ResolvedAdapter] = ()
) -> list[Problem]:
    """Problems that can be found before anything starts, as condition reasons with messages naming fields.

    InvalidSpec for the service itself (parallelism, runtime vs model format); IncompatibleAdapter for an
    adapter that vLLM would refuse at load time (rank above maxLoraRank, another base model, DoRA,
    modules_to_save, a source vLLM cannot read). LoRA on an AWQ or compressed-tensors base is served by vLLM
    and is not a problem; LoRA on a GGUF model is. `model` None: the model is not known (an offline check whose
    model source is not in the input), and what depends on it is not checked.
    """
    problems: list[Problem] = []

    def invalid(fld: str, msg: str) -> None:
        problems.append(Problem(Reason.INVALID_SPEC, fld, msg))

    def incompatible(fld: str, msg: str) -> None:
        problems.append(Problem(Reason.INCOMPATIBLE_ADAPTER, fld, msg))

    if spec.runtime == "llamacpp":
        if model is not None:
            _check_llamacpp(spec, model, invalid)
        return problems
    if model is not None:
        _check_parallelism(spec, model, invalid)
    lora = effective_lora(spec, adapters)
    if lora is None:
        return problems
    if lora.max_cpu_loras is not None and lora.max_cpu_loras < lora.max_loras:
        invalid("spec.lora.maxCpuLoras", f"must be at least maxLoras ({lora.max_loras})")
    if model is not None and model.format == "gguf" and lora.adapters:
        incompatible("spec.lora", "LoRA adapters cannot be served on a GGUF model")
    fetched = [i for i, a in enumerate(lora.adapters) if a.uri and fetched_by_loader(a.uri)]
    if fetched and spec.vllm_settings().nodes > 1:
        invalid(
            f"spec.lora.adapters[{fetched[0]}].uri",
            "s3:// and hf://...@revision adapters are fetched by a loader beside vLLM in single-node Pods; a "
            "multi-node service serves adapters from pvc:// or an unpinned hf:// name",
        )
    index = {a.name: i for i, a in enumerate(lora.adapters)}
    by_uri = {a.name for a in lora.adapters if a.uri is not None}
    for a in adapters:
        fld = f"spec.lora.adapters[{index.get(a.name, '?')}]"
        for msg in _adapter_problems(a, lora, model, by_uri=a.name in by_uri):
            incompatible(fld, msg)
    return problems


def _check_llamacpp(spec: InferenceServiceSpec, model: ResolvedModel, invalid: Report) -> None:
    if model.format != "gguf":
        invalid(
            "spec.runtime",
            f"llamacpp serves GGUF models; this model is {model.format} (use runtime: vllm)",
        )
    elif not model.uri.lower().endswith(".gguf") and not (
        spec.model.file or gguf_file(model.files, spec.model.gguf_type)
    ):
        want = f" of type {spec.model.gguf_type}" if spec.model.gguf_type else ""
        invalid("spec.model", f"no GGUF file{want} in {model.uri}; set spec.model.file")


def _check_parallelism(spec: InferenceServiceSpec, model: ResolvedModel, invalid: Report) -> None:
    v = spec.vllm_settings()
    if model.format == "gguf":
        invalid("spec.runtime", "vllm does not serve GGUF artifacts here; use runtime: llamacpp")
    heads = model.num_attention_heads
    if heads is not None and heads % v.tensor_parallel_size != 0:
        invalid(
            "spec.vllm.tensorParallelSize",
            f"{v.tensor_parallel_size} does not divide the model's {heads} attention heads",
        )
    # GPU counts and the pipeline across nodes are the spec's own rules (api/inferenceservice.py): a spec that
    # parsed has them right.


def _adapter_problems(
    a: ResolvedAdapter, lora: LoraSpec, model: ResolvedModel | None, *, by_uri: bool
) -> list[str]:
    """Why vLLM would refuse to load this adapter on this model, if it would (`by_uri`: the spec names it by uri,
    else it is a FineTunedModel's)."""
    out: list[str] = []
    if not by_uri and fetched_by_loader(a.uri):
        # Published where vLLM cannot read: the Pods' loader fetches only what the spec names by uri (with the
        # spec's Secret and digest).
        where = "s3://" if a.uri.startswith("s3://") else "a pinned hf:// revision"
        out.append(
            f"adapter {a.name!r} is published to {where}, which vLLM cannot read: publish it to a claim (the "
            "FineTunedModel's output on pvc://), or name it by uri (with its tokenSecretRef and digest) so the "
            "Pods' adapter loader fetches it"
        )
    if a.rank is not None and a.rank > lora.max_lora_rank:
        out.append(f"adapter {a.name!r} has rank {a.rank}, above lora.maxLoraRank {lora.max_lora_rank}")
    if (
        a.base_model_name
        and model is not None
        and model.base_model_name
        and _model_id(a.base_model_name) != _model_id(model.base_model_name)
    ):
        out.append(
            f"adapter {a.name!r} was trained on {a.base_model_name!r}, the service serves "
            f"{model.base_model_name!r}"
        )
    if a.use_dora:
        out.append(f"adapter {a.name!r} is a DoRA adapter, which vLLM does not serve; merge it instead")
    extra = sorted(set(a.modules_to_save) - VLLM_MODULES_TO_SAVE)
    if extra:
        out.append(
            f"adapter {a.name!r} saves full modules {', '.join(extra)} (modules_to_save), which vLLM does not "
            "serve; merge it instead"
        )
    return out


def no_merged_model(ftm: str) -> str:
    """Why model.serve merged cannot serve FineTunedModel `ftm` (merge disabled): the operator's words, and
    `tuneops validate`'s."""
    return (f"model.serve is merged but FineTunedModel {ftm} has merge.enabled false: there is no merged model; "
            "set model.serve to lora or auto, or enable the merge")  # fmt: skip
