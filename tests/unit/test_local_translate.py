"""The local node's pure translations: quantities, $(VAR) expansion, path and host rewrites, image mapping."""

from __future__ import annotations

import pytest

from tuneops.config import Images
from tuneops.local.runtimes import Runtime, default_runtimes, find_runtime
from tuneops.local.translate import (
    Mount,
    PathRewriter,
    expand,
    field_value,
    quantity,
    requests_gpu,
    resource_value,
    rewrite_listen_host,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [("2", 2.0), ("500m", 0.5), ("8Gi", 8 * 2**30), ("1e3", 1000.0), ("64Mi", 64 * 2**20), ("1.5", 1.5)],
)
def test_quantities(text: str, value: float) -> None:
    assert quantity(text) == value


def test_bad_quantity_is_refused() -> None:
    with pytest.raises(ValueError):
        quantity("2 cores")


@pytest.mark.parametrize(
    ("container", "resource", "divisor", "want"),
    [
        ({"resources": {"limits": {"cpu": "1500m"}}}, "limits.cpu", None, "2"),
        ({"resources": {"limits": {"cpu": "2"}}}, "limits.cpu", "0", "2"),  # the API's default divisor
        ({"resources": {"requests": {"memory": "1Gi"}}}, "limits.memory", "1Mi", "1024"),
        ({}, "limits.cpu", None, "0"),
    ],
)
def test_resource_field_ref(
    container: dict[str, object], resource: str, divisor: str | None, want: str
) -> None:
    assert resource_value(container, resource, divisor) == want


def test_var_expansion_follows_kubernetes() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)/$(B)", env) == "x/y"
    assert expand("$(MISSING)", env) == "$(MISSING)"
    assert expand("$$(A)", env) == "$(A)"


def test_paths_are_rewritten_by_whole_components_longest_first() -> None:
    r = PathRewriter(
        [Mount("/mnt/pvc/models", "/h/pvc/models"), Mount("/tmp", "/s/tmp"), Mount("/mnt/pvc", "/h/other")],
        keep=["/tmp/node-root"],
    )
    assert r.rewrite("/mnt/pvc/models/llama") == "/h/pvc/models/llama"
    assert r.rewrite("--model=/mnt/pvc/models") == "--model=/h/pvc/models"
    assert r.rewrite('{"path":"/mnt/pvc/models/a"}') == '{"path":"/h/pvc/models/a"}'
    assert r.rewrite("/tmpfoo /tmp/x") == "/tmpfoo /s/tmp/x"
    assert r.rewrite("/data/tmp/x") == "/data/tmp/x"  # not a path that starts with a mount
    assert r.rewrite("/tmp/node-root/pvc/x") == "/tmp/node-root/pvc/x"  # already a host path


def test_wildcard_listen_addresses_become_the_pod_address() -> None:
    args = ["--host", "0.0.0.0", "--port", "8000", "--bind=0.0.0.0", "--other", "0.0.0.0"]
    assert rewrite_listen_host(args, "127.42.0.9") == [
        "--host", "127.42.0.9", "--port", "8000", "--bind=127.42.0.9", "--other", "0.0.0.0",
    ]  # fmt: skip


def test_field_refs() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
        "spec": {"nodeName": "local"},
    }
    assert field_value(pod, "metadata.name", "127.42.0.2", "127.0.0.1") == "p"
    assert field_value(pod, "metadata.labels['app']", "", "") == "web"
    assert field_value(pod, "status.podIP", "127.42.0.2", "127.0.0.1") == "127.42.0.2"
    with pytest.raises(ValueError):
        field_value(pod, "spec.nope", "", "")


def test_gpu_requests_are_found_in_any_container() -> None:
    pod = {
        "spec": {"initContainers": [{"resources": {"limits": {"nvidia.com/gpu": "1"}}}], "containers": [{}]}
    }
    assert requests_gpu(pod) == "nvidia.com/gpu"
    assert requests_gpu({"spec": {"containers": [{"resources": {"limits": {"cpu": "2"}}}]}}) is None


def test_the_operator_images_map_to_local_runtimes() -> None:
    runtimes = default_runtimes()
    images = Images()
    names = {
        image: getattr(find_runtime(runtimes, image), "name", None) for image in images.model_dump().values()
    }
    assert names == {
        images.worker: "tuneops",
        images.gguf: "tuneops",
        images.vllm: "vllm",
        images.llamacpp: "llamacpp",
    }
    assert find_runtime(runtimes, "registry.example/unknown:1") is None
    vllm = find_runtime(runtimes, images.vllm)
    assert vllm is not None and vllm.env["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_runtime_from_yaml_mapping() -> None:
    r = Runtime.from_dict({"name": "x", "images": "^a/b:", "commands": {"python3": "/usr/bin/python3"}})
    assert r.matches("a/b:1") and not r.matches("c/a/b:1")
    assert r.resolve("python3") == "/usr/bin/python3"
    assert r.resolve("sh") is not None
