"""The adapter loader in the vLLM Pod (s3:// and hf://...@revision adapters), and how a Pod's plan follows what
its loader answers."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.render_support import validate
from tuneops.adapters.fetching import Fetched, kept_paths, parse_answer, resolve
from tuneops.adapters.types import AdapterState, DesiredAdapter, ServedModels
from tuneops.api import SpecError, parse_spec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.serving import loader, render_inferenceservice
from tuneops.render.types import Owner, ResolvedAdapter, ResolvedModel

OWNER = Owner("tuneops.io/v1alpha1", "InferenceService", "chat", "ml", "uid-1")
DIGEST = "sha256:" + "ab" * 32


def _spec(adapters: list[dict[str, Any]], **lora: Any) -> InferenceServiceSpec:
    obj = {"kind": "InferenceService", "metadata": {"name": "chat"}, "spec": {
        "model": {"uri": "pvc://models/base"}, "apiKeySecretRef": {"name": "chat-key", "key": "key"},
        "lora": {"adapters": adapters, **lora},
    }}  # fmt: skip
    spec = parse_spec("InferenceService", obj)
    assert isinstance(spec, InferenceServiceSpec)
    return spec


S3 = {"name": "sql", "uri": "s3://team-a/adapters/sql", "digest": DIGEST,
      "tokenSecretRef": {"name": "team-a-s3", "key": "unused"}}  # fmt: skip
HUB = {
    "name": "chat",
    "uri": "hf://acme/chat-lora@0123abc",
    "tokenSecretRef": {"name": "hub", "key": "token"},
}
CLAIM = {"name": "claim", "uri": "pvc://adapters/claim"}


def _render(spec: InferenceServiceSpec, config: OperatorConfig | None = None) -> list[dict[str, Any]]:
    adapters = [
        ResolvedAdapter(name=a.name, uri=a.uri or "", digest=a.digest, token_secret=a.token_secret_ref)
        for a in spec.lora.adapters  # type: ignore[union-attr]
    ]
    rendered = render_inferenceservice(
        spec, OWNER, config or OperatorConfig(operator_namespace="tuneops-system"),
        model=ResolvedModel(uri="pvc://models/base"), adapters=adapters,
    )  # fmt: skip
    return rendered.manifests


def _pod(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


def test_a_fetched_adapter_brings_a_native_sidecar_with_its_own_secret_and_a_shared_read_only_cache() -> None:
    manifests = _render(_spec([S3, HUB, CLAIM], cacheSize="2Gi"))
    for m in manifests:
        validate(m)
    pod = _pod(manifests)
    (side,) = [c for c in pod["initContainers"] if c["name"] == loader.CONTAINER]
    assert side["restartPolicy"] == "Always" and side["image"] == OperatorConfig().images.worker
    assert side["args"][:2] == ["worker", "adapter-loader"]
    assert side["args"][side["args"].index("--max-bytes") + 1] == str(2 * 2**30)
    env = {e["name"]: e for e in side["env"]}
    s3_role = loader.secret_role(_spec([S3]).lora.adapters[0].token_secret_ref)  # type: ignore[union-attr, arg-type]
    prefix = f"TUNEOPS_{s3_role.upper().replace('-', '_')}_"
    assert env[prefix + "AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "team-a-s3"
    hub_vars = [n for n in env if n.endswith("_HF_TOKEN")]
    assert len(hub_vars) == 1 and env[hub_vars[0]]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "token",
    }
    # The loader answers only with the server's API key; no URI to credential map lives in the Pod.
    assert env[loader.API_KEY_ENV]["valueFrom"]["secretKeyRef"]["name"] == "chat-key"
    assert "TUNEOPS_CREDENTIALS" not in env
    server = pod["containers"][0]
    assert {"mountPath": loader.CACHE_DIR, "name": loader.VOLUME, "readOnly": True} in server["volumeMounts"]
    (cache,) = [v for v in pod["volumes"] if v["name"] == loader.VOLUME]
    assert cache["emptyDir"]["sizeLimit"] == "4096Mi"
    # vLLM starts with the claim's adapter only: the fetched ones are loaded at runtime, from the cache.
    config = next(m for m in manifests if m["kind"] == "ConfigMap")
    assert '"claim"' in str(config["data"]) and "sql" not in str(config["data"]).replace("sql-", "")
    # With the API key in front of both, no NetworkPolicy is needed.
    assert not [m for m in manifests if m["kind"] == "NetworkPolicy"]


def test_without_an_api_key_only_the_operators_namespace_reaches_the_loader() -> None:
    spec = _spec([S3]).model_copy(update={"api_key_secret_ref": None})
    policy = next(m for m in _render(spec) if m["kind"] == "NetworkPolicy")
    rules = [
        r for r in policy["spec"]["ingress"] if r.get("ports") == [{"port": "loader", "protocol": "TCP"}]
    ]
    assert len(rules) == 1
    assert rules[0]["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["tuneops-system"]
    side = next(c for c in _pod(_render(spec))["initContainers"] if c["name"] == loader.CONTAINER)
    assert loader.API_KEY_ENV not in {e["name"] for e in side["env"]}


def test_adding_an_adapter_without_a_new_secret_leaves_the_pod_template_alone() -> None:
    other = {**S3, "name": "sql-v2", "uri": "s3://team-a/adapters/sql-v2", "digest": "sha256:" + "cd" * 32}
    public = {"name": "pub", "uri": "hf://acme/pub@v1"}
    first = _pod(_render(_spec([S3, CLAIM])))
    second = _pod(_render(_spec([S3, other, public, CLAIM])))
    assert first == second


@pytest.mark.parametrize(
    "config",
    [
        OperatorConfig(native_sidecars=False),
        # a cluster before 1.29 (found at startup) would drop restartPolicy and never start vLLM
        OperatorConfig(features={"native_sidecars": False}),
    ],
)
def test_without_native_sidecars_the_loader_is_a_second_container(config: OperatorConfig) -> None:
    pod = _pod(_render(_spec([S3]), config))
    assert [c["name"] for c in pod["containers"]][1:] == [loader.CONTAINER]
    assert "restartPolicy" not in pod["containers"][1]
    assert loader.CONTAINER not in [c["name"] for c in pod.get("initContainers", [])]


def test_services_without_fetched_adapters_have_no_loader() -> None:
    pod = _pod(_render(_spec([CLAIM, {"name": "hub", "uri": "hf://acme/unpinned"}])))
    names = [c["name"] for c in [*pod["containers"], *pod.get("initContainers", [])]]
    assert loader.CONTAINER not in names


@pytest.mark.parametrize(
    ("adapter", "lora", "needle"),
    [
        ({**CLAIM, "digest": DIGEST}, {}, "digest is checked by the adapter loader"),
        ({**CLAIM, "tokenSecretRef": {"name": "x", "key": "y"}}, {}, "tokenSecretRef applies to s3://"),
        (S3, {"dynamic": False}, "need lora.dynamic true"),
        ({**S3, "digest": "sha256:short"}, {}, "digest"),
    ],
)
def test_what_the_loader_cannot_do_is_refused_when_applied(
    adapter: dict[str, Any], lora: dict[str, Any], needle: str
) -> None:
    obj = {"kind": "InferenceService", "metadata": {"name": "chat"}, "spec": {
        "model": {"uri": "pvc://models/base"}, "lora": {"adapters": [adapter], **lora},
    }}  # fmt: skip
    with pytest.raises(SpecError) as err:
        parse_spec("InferenceService", obj)
    assert needle in str(err.value), err.value


def test_s3_and_pinned_hub_adapters_are_accepted() -> None:
    obj = {"kind": "InferenceService", "metadata": {"name": "chat"}, "spec": {
        "model": {"uri": "pvc://models/base"}, "lora": {"adapters": [S3, HUB]},
    }}  # fmt: skip
    spec = parse_spec("InferenceService", obj)
    assert isinstance(spec, InferenceServiceSpec) and loader.needs_loader(spec)


CACHE = loader.CACHE_DIR


def test_the_plan_follows_the_loader() -> None:
    desired = {
        "claim": DesiredAdapter(name="claim", path="/mnt/pvc/adapters/claim", digest=""),
        "new": DesiredAdapter(name="new", path="", digest="", uri="s3://b/new"),
        "moving": DesiredAdapter(name="moving", path="", digest="", uri="s3://b/moving-v2"),
        "broken": DesiredAdapter(name="broken", path="", digest=DIGEST, uri="s3://b/broken"),
        "ready": DesiredAdapter(name="ready", path="", digest="", uri="hf://a/r@v1"),
    }
    served = ServedModels(adapters={"moving": f"{CACHE}/{'11' * 32}", "claim": "/mnt/pvc/adapters/claim"})
    fetched = {
        "new": Fetched(state="Fetching"),
        "moving": Fetched(state="Fetching"),
        "broken": Fetched(state="Failed", reason="DigestMismatch", message="got sha256:99"),
        "ready": Fetched(state="Ready", path=f"{CACHE}/{'22' * 32}", digest=f"sha256:{'22' * 32}"),
    }
    plan, states = resolve(desired, served, fetched)
    assert plan["claim"] == desired["claim"]
    assert plan["ready"].path == f"{CACHE}/{'22' * 32}" and plan["ready"].digest == f"sha256:{'22' * 32}"
    # the old version stays served while the new one downloads: nothing unloads it
    assert plan["moving"].path == served.adapters["moving"]
    assert "new" not in plan and "broken" not in plan
    assert states["new"].state is AdapterState.LOADING and states["moving"].state is AdapterState.LOADING
    assert states["broken"].state is AdapterState.FAILED and "DigestMismatch" in states["broken"].message
    assert kept_paths(served) == [served.adapters["moving"]]


@pytest.mark.parametrize(
    "entry",
    [
        {"state": "Ready", "path": "/etc", "digest": DIGEST},
        {"state": "Ready", "path": f"{CACHE}/../{'ab' * 32}", "digest": DIGEST},
        {"state": "Ready", "path": f"relative/{'ab' * 32}", "digest": DIGEST},
        {"state": "Ready", "path": f"{CACHE}/{'cd' * 32}", "digest": DIGEST},
        {"state": "Ready", "path": f"{CACHE}/{'ab' * 32}", "digest": "md5:x"},
    ],
)
def test_a_loader_answer_naming_anything_but_its_own_content_folder_is_refused(entry: dict[str, str]) -> None:
    from tuneops.adapters.client import AdapterAPIError

    with pytest.raises(AdapterAPIError, match="content-addressed"):
        parse_answer({"adapters": {"a": entry}}, {"a"})


def test_a_loader_answer_is_cut_to_what_was_asked() -> None:
    body = {"adapters": {"a": {"state": "Failed", "reason": "X" * 500, "message": "\x1b[31m" + "m" * 5000},
                         "other": {"state": "Ready"}}}  # fmt: skip
    got = parse_answer(body, {"a", "b"})
    assert set(got) == {"a", "b"} and got["b"].state == "Fetching"
    assert len(got["a"].reason) <= 40 and len(got["a"].message) <= 200 and "\x1b" not in got["a"].message
