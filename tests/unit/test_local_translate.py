"""The local node's pure translations: quantities, $(VAR) expansion, path and host rewrites, image mapping,
a container's environment and command line, Go durations in messages, and loopback ranges per node."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneops.config import Images
from tuneops.local import loopback, probes
from tuneops.local.container import Container, go_duration
from tuneops.local.podenv import (
    ConfigError,
    Placement,
    command_line,
    declared_env,
    process_env,
)
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


# ----- a container's environment and command line -------------------------------------------------------

CONFIG = {
    ("configmaps", "settings"): {"MODE": b"fast", "PATH_HINT": b"/mnt/models"},
    ("secrets", "token"): {"key": b"s3cret"},
}


def lookup(kind: str, name: str, optional: bool) -> dict[str, bytes]:
    if (kind, name) in CONFIG:
        return CONFIG[(kind, name)]
    if optional:
        return {}
    raise ConfigError(f'{kind[:-1]} "{name}" not found')


def placement(containers: list[dict[str, object]] | None = None) -> Placement:
    pod = {
        "metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
        "spec": {"nodeName": "local", "containers": containers or []},
    }
    return Placement(pod, "127.42.0.7", "/node/pods/p/home", "127.0.0.1", 6443, {"cpu": "4", "memory": "8Gi"})


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ([{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)/y"}], {"A": "x", "B": "x/y"}),
        ([{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}], {"POD": "p"}),
        ([{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}], {"IP": "127.42.0.7"}),
        # An unset limit reads as the node's allocatable.
        ([{"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}], {"CPUS": "4"}),
        ([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "token", "key": "key"}}}], {"T": "s3cret"}),
        ([{"name": "T", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": True}}}], {}),
    ],
)
def test_declared_env(env: list[dict[str, object]], want: dict[str, str]) -> None:
    assert declared_env({"name": "c", "env": env}, placement(), lookup) == want


def test_env_from_takes_a_prefix_and_env_wins() -> None:
    spec = {
        "name": "c",
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "APP_"}],
        "env": [{"name": "APP_MODE", "value": "slow"}],
    }
    assert declared_env(spec, placement(), lookup) == {"APP_MODE": "slow", "APP_PATH_HINT": "/mnt/models"}


@pytest.mark.parametrize(
    "source",
    [
        {"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "token", "key": "missing"}}}]},
        {"envFrom": [{"secretRef": {"name": "gone"}}]},
    ],
)
def test_a_missing_required_source_makes_the_container_wait(source: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        declared_env({"name": "c", **source}, placement(), lookup)


def test_process_env_adds_the_kubelets_variables_and_maps_paths_and_addresses() -> None:
    spec = {"name": "c", "resources": {"limits": {"cpu": "1500m"}}}
    mounts = [Mount("/mnt/models", "/node/pvc/models"), Mount("/tmp", "/scratch/tmp")]
    declared = {"MODEL": "/mnt/models/tiny", "HOST": "0.0.0.0"}
    env = process_env(spec, declared, {"PATH": "/bin"}, PathRewriter(mounts), placement(), mounts)
    assert env == {
        "PATH": "/bin",
        "HOME": "/node/pods/p/home",
        "HOSTNAME": "p",
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": "6443",
        "MODEL": "/node/pvc/models/tiny",
        "HOST": "127.42.0.7",
        "OMP_NUM_THREADS": "2",
        "TMPDIR": "/scratch/tmp",
    }


SERVER = Runtime(name="srv", images=("srv",), commands={"serve": "/opt/srv/bin/serve"}, entrypoint=("serve",))


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        ({"args": ["--host", "0.0.0.0", "--model", "$(MODEL)"]},
         ["/opt/srv/bin/serve", "--host", "127.42.0.7", "--model", "/node/pvc/models/tiny"]),
        ({"command": ["serve", "--port=$(PORT)"], "args": ["--bind=0.0.0.0"]},
         ["/opt/srv/bin/serve", "--port=8000", "--bind=127.42.0.7"]),
    ],
)  # fmt: skip
def test_command_line(spec: dict[str, object], want: list[str]) -> None:
    env = {"MODEL": "/mnt/models/tiny", "PORT": "8000"}
    rewriter = PathRewriter([Mount("/mnt/models", "/node/pvc/models")])
    assert command_line(spec, SERVER, env, rewriter, "127.42.0.7") == want


def test_command_line_failures_name_the_runtime() -> None:
    rewriter = PathRewriter([])
    with pytest.raises(FileNotFoundError, match="srv"):
        command_line({"command": ["no-such-program-here"]}, SERVER, {}, rewriter, "127.42.0.7")
    bare = Runtime(name="bare", images=("bare",))
    with pytest.raises(ConfigError, match="no entrypoint"):
        command_line({"image": "bare:1"}, bare, {}, rewriter, "127.42.0.7")


def test_probes_decide_readiness_and_restarts_from_their_thresholds() -> None:
    ready_spec = {"periodSeconds": 1, "failureThreshold": 2}
    live_spec = {"periodSeconds": 1, "failureThreshold": 3}
    c = Container({"name": "c", "readinessProbe": ready_spec, "livenessProbe": live_spec}, init=False)
    c.arm_probes(now=0.0, cap=None)
    healthy = {"readiness": True, "liveness": True}

    def check(spec: dict[str, object]) -> tuple[bool, str]:
        return healthy["readiness" if spec is ready_spec else "liveness"], "down"

    assert probes.advance(c, 0.0, check) == [] and c.ready
    healthy["readiness"] = False
    assert probes.advance(c, 1.0, check) == [] and c.ready  # one failure is within the threshold
    assert probes.advance(c, 2.0, check) == [probes.Finding("unready", "Readiness probe failed: down")]
    assert not c.ready
    healthy["liveness"] = False
    assert probes.advance(c, 3.0, check) == []
    assert probes.advance(c, 4.0, check) == []
    assert probes.advance(c, 5.0, check) == [probes.Finding("restart", "Liveness probe failed: down")]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "500ms"), (2, "2s"), (10, "10s"), (80, "1m20s"), (160, "2m40s"), (300, "5m0s"), (1.5, "1.5s")],
)
def test_back_off_durations_read_as_the_kubelet_prints_them(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_each_node_holds_its_own_loopback_range_until_it_lets_go(tmp_path: Path) -> None:
    first = loopback.claim(folder=tmp_path)
    second = loopback.claim(folder=tmp_path)
    assert (first.prefix, second.prefix) == ("127.42", "127.43")
    with pytest.raises(loopback.PrefixTaken, match=r"127\.42"):
        loopback.claim(exact="127.42", folder=tmp_path)
    # A node that restarts gets its old range back when it is free, and never one another node holds.
    third = loopback.claim(preferred="127.43", folder=tmp_path)
    assert third.prefix == "127.44"
    first.release()
    again = loopback.claim(preferred="127.42", folder=tmp_path)
    assert again.prefix == "127.42"
    for held in (second, third, again):
        held.release()
