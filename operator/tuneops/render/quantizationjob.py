"""Manifests of a QuantizationJob: the AWQ or GGUF quantize Job and the quality-gate evaluate Job."""

from __future__ import annotations

from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.artifacts import default_output_uri, gguf_file
from tuneops.render.env import Source
from tuneops.render.jobs import WorkerStep, render_job, worker_cmd
from tuneops.render.types import Manifest, ModelFormat, Owner, RenderError, ResolvedModel
from tuneops.storage.uri import join_uri

QUANTIZE = "quantize"
EVALUATE = "evaluate"


def quantize_output_uri(spec: QuantizationJobSpec, owner: Owner, config: OperatorConfig) -> str:
    return spec.output.uri if spec.output else default_output_uri(config, owner)


def artifact_format(spec: QuantizationJobSpec) -> ModelFormat:
    """The format of what the quantize step writes (AutoAWQ writes AWQ; llm-compressor, compressed-tensors)."""
    if spec.method == "gguf":
        return "gguf"
    return "awq" if spec.awq_settings().backend == "autoawq" else "compressed-tensors"


def quantize_args(
    spec: QuantizationJobSpec, source_uri: str, output: str, *, allow_custom_code: bool = False
) -> list[str]:
    """The worker command line of the quantize step (the same flags the worker CLI documents)."""
    if spec.method == "awq":
        awq = spec.awq_settings()
        args = [
            "quantize-awq",
            "--source", source_uri,
            "--output", output,
            "--backend", awq.backend,
            "--bits", str(awq.bits),
            "--group-size", str(awq.group_size),
        ]  # fmt: skip
        if not awq.zero_point:
            args.append("--no-zero-point")
        args += ["--samples", str(awq.calibration.samples), "--max-seq-len", str(awq.calibration.max_seq_len)]
        if awq.calibration.dataset_uri:
            args += ["--calibration", awq.calibration.dataset_uri]
        return args
    gguf = spec.gguf_settings()
    args = ["quantize-gguf", "--source", source_uri, "--output", output]
    for t in gguf.quant_types:
        args += ["--type", t]
    args += ["--outtype", gguf.outtype]
    return [*args, "--allow-custom-code"] if allow_custom_code else args


def _source(spec: QuantizationJobSpec, source: ResolvedModel) -> Source:
    return Source("source", source.uri, spec.source.token_secret_ref or source.token_secret)


def _output(spec: QuantizationJobSpec, output: str) -> Source:
    return Source("output", output, spec.output.token_secret_ref if spec.output else None)


def _image(spec: QuantizationJobSpec, config: OperatorConfig, gguf: bool) -> str:
    return spec.job.image or (config.images.gguf if gguf else config.images.worker)


def render_quantize_job(
    spec: QuantizationJobSpec, owner: Owner, config: OperatorConfig, *, source: ResolvedModel
) -> Manifest:
    """The quantize Job; its name changes with the spec, the image and the source's URI and digest."""
    output = quantize_output_uri(spec, owner, config)
    args = quantize_args(spec, source.uri, output, allow_custom_code=config.allow_custom_code)
    inputs = [source.uri]
    sources = [_source(spec, source), _output(spec, output)]
    calibration = spec.awq_settings().calibration if spec.method == "awq" else None
    if calibration is not None and calibration.dataset_uri:
        inputs.append(calibration.dataset_uri)
        sources.append(Source("calibration", calibration.dataset_uri, calibration.token_secret_ref))
    step = WorkerStep(
        step=QUANTIZE,
        image=_image(spec, config, spec.method == "gguf"),
        args=worker_cmd(args[0], *args[1:]),
        inputs=tuple(inputs),
        output=output,
        digests={source.uri: source.digest},
        sources=tuple(sources),
    )
    return render_job(owner, config, spec.job, step)


def evaluated_model_uri(spec: QuantizationJobSpec, artifact: ResolvedModel) -> str:
    """What the gate measures: the artifact, or for GGUF the file of the first quantization type (the one a
    service serves by default)."""
    if spec.method != "gguf" or artifact.uri.lower().endswith(".gguf"):
        return artifact.uri
    file = gguf_file(artifact.files, spec.gguf_settings().quant_types[0])
    return join_uri(artifact.uri, file) if file else artifact.uri


def render_evaluate_job(
    spec: QuantizationJobSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    source: ResolvedModel,
    artifact: ResolvedModel,
) -> Manifest:
    """The quality-gate Job: perplexity of the quantized artifact against its source on the same text."""
    gate = spec.quality_gate
    if gate is None:
        raise RenderError("spec.qualityGate is not set: there is no evaluate Job")
    model_uri = evaluated_model_uri(spec, artifact)
    args = ["--model", model_uri, "--reference", source.uri]
    if gate.eval_dataset_uri:
        args += ["--dataset", gate.eval_dataset_uri]
    args += ["--samples", str(gate.samples), "--max-increase-pct", f"{gate.max_perplexity_increase_pct:g}"]
    inputs = [model_uri, source.uri, *([gate.eval_dataset_uri] if gate.eval_dataset_uri else [])]
    step = WorkerStep(
        step=EVALUATE,
        image=_image(spec, config, artifact.format == "gguf"),
        args=worker_cmd(EVALUATE, *args),
        inputs=tuple(inputs),
        output=None,
        digests={source.uri: source.digest, model_uri: artifact.digest},
        sources=(
            # The artifact is read where this resource wrote it, so with its output's Secret.
            Source("model", model_uri, spec.output.token_secret_ref if spec.output else None),
            _source(spec, source),
            Source("dataset", gate.eval_dataset_uri, gate.token_secret_ref),
        ),
    )
    return render_job(owner, config, spec.job, step)


def render_quantizationjob(
    spec: QuantizationJobSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    source: ResolvedModel,
    artifact: ResolvedModel | None = None,
) -> list[Manifest]:
    """Every Job the operator may create for this resource, in run order (for `tuneops render`).

    Before the quantize Job has run, the evaluate Job is shown against the expected output URI.
    """
    out = [render_quantize_job(spec, owner, config, source=source)]
    if spec.quality_gate is not None:
        expected = artifact or ResolvedModel(
            uri=quantize_output_uri(spec, owner, config), format=artifact_format(spec)
        )
        out.append(render_evaluate_job(spec, owner, config, source=source, artifact=expected))
    return out
