"""llama.cpp serving: one GGUF file behind llama-server in a Deployment, on CPU unless GPU layers are asked for."""

from __future__ import annotations

from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.artifacts import gguf_file
from tuneops.render.env import env_value
from tuneops.render.pod import cpu_cores, tmp_volume
from tuneops.render.serving.args import llamacpp_args
from tuneops.render.serving.pod import (
    api_key_env,
    model_files,
    pod_metadata,
    server_container,
    server_pod_spec,
    server_resources,
)
from tuneops.render.serving.types import ServingRender, served_model_name
from tuneops.render.serving.workload import deployment, rollout, serving_render
from tuneops.render.types import Owner, RenderError, ResolvedModel
from tuneops.render.volumes import Mounts, parse
from tuneops.storage.uri import join_uri

STARTUP_SECONDS = 600
KEY_ENV = "LLAMA_API_KEY"


def gguf_target(spec: InferenceServiceSpec, model: ResolvedModel) -> tuple[str, str | None]:
    """(URI to mount or download, file name inside it) of the GGUF file to serve.

    A downloaded single-file URI lands in the model folder under its own name.
    """
    u = parse(model.uri)
    if model.uri.lower().endswith(".gguf"):
        return model.uri, (u.name if u.scheme in ("s3", "hf") else None)
    file = spec.model.file or gguf_file(model.files, spec.model.gguf_type)
    if file is None:
        want = f" of type {spec.model.gguf_type}" if spec.model.gguf_type else ""
        raise RenderError(f"spec.model: no GGUF file{want} in {model.uri}; set spec.model.file")
    if u.scheme == "s3":
        # Download only the file that is served, not every quantization in the artifact.
        return join_uri(model.uri, file), file
    return model.uri, file


def render_llamacpp(
    spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, model: ResolvedModel
) -> ServingRender:
    lc = spec.llamacpp_settings()
    served = served_model_name(spec, owner)
    uri, file = gguf_target(spec, model)
    mounts = Mounts(config)
    files = model_files(spec, model, config, mounts, uri=uri, file=file)
    gpus = spec.gpus_per_pod()
    resources = server_resources(spec, config, gpus, cpu_default=True)
    threads = lc.threads or cpu_cores(resources.get("limits", {}).get("cpu"))
    tmp, tmp_mount = tmp_volume(config)
    container = server_container(
        spec,
        image=spec.image or config.images.llamacpp,
        args=llamacpp_args(model_path=files.path, served_name=served, llamacpp=lc, threads=threads),
        env=[env_value("HOME", "/tmp"), *api_key_env(spec, KEY_ENV)],
        resources=resources,
        volume_mounts=[tmp_mount, *files.mounts, *mounts.volume_mounts()],
        startup_seconds=STARTUP_SECONDS,
    )
    volumes = [tmp, *files.volumes, *mounts.volumes()]
    pod = server_pod_spec(
        spec, config, container, volumes=volumes, files=files, gpus=gpus, shutdown_seconds=30
    )
    template = {"metadata": pod_metadata(spec, owner, model), "spec": pod}
    strategy, note = rollout(spec, config, gpus)
    return serving_render(
        spec,
        owner,
        config,
        manifests=[],
        workload=deployment(spec, owner, template, strategy, STARTUP_SECONDS),
        note=note,
        served_models=(served,),
        key_env=KEY_ENV,
    )
