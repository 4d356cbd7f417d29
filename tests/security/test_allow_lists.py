"""A tenant's spec chooses parts of the Pods the operator creates; the operator config decides which choices are
allowed. Each attack from a spec is refused as NotAllowed by the operator and by `tuneops validate`; the runtime
LoRA API is never open without an API key or a NetworkPolicy; the API key Secret is read only when needed, and
a Secret the operator may not read is a condition, not a log line."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from tests.unit.render_support import check_golden, validate
from tests.unit.test_validate_equals_operator import (
    FTM_HEAD,
    IS_HEAD,
    MemoryKube,
    Row,
    _on_cluster,
    operator_verdict,
)
from tuneops import API_VERSION
from tuneops.api.conditions import SECURED, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.cli import main
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile import RECONCILERS
from tuneops.reconcile.base import Context
from tuneops.render import Owner, ResolvedAdapter, ResolvedModel
from tuneops.render.serving import render_inferenceservice
from tuneops.validation.policy import check_pod_policy

OWNER = Owner(API_VERSION, "InferenceService", "svc", "team-a", "uid-1")
MODEL = ResolvedModel(uri="pvc://models/base")


def service(**spec: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/base"}, **spec})


def refused(spec: InferenceServiceSpec, config: OperatorConfig | None = None) -> dict[str, str]:
    return {p.field: p.message for p in check_pod_policy(spec, config or OperatorConfig())}


# -- server arguments: an allow-list read the way each server's parser reads it ------------------------------

# (args, index refused, words in the message): every spelling argparse (vLLM) or llama.cpp's parser reads.
REFUSED_VLLM = [
    (["--trust-remote-code"], 0, "not among"),
    (["--trust_remote_code"], 0, "not among"),
    (["--trust-remote-code=true"], 0, "not among"),
    (["--trust-remote"], 0, "not among"),  # argparse would take an unambiguous prefix
    (["--max-num-se", "8"], 0, "write flags in full"),  # a prefix of a safe flag is refused too
    (["--config", "/mnt/pvc/m/x/flags.yaml"], 0, "read more flags from a file"),
    (["--config=/mnt/pvc/m/x/flags.yaml"], 0, "read more flags from a file"),
    (["--lora-modules.name", "x", "--lora-modules.path", "/p"], 0, "set by the operator"),
    (["--lora_modules.path=/p"], 0, "set by the operator"),
    (["--compilation-config.inductor_passes", "{}"], 0, "no dotted form"),
    (["-O3"], 0, "not among"),
    (["--tool-parser-plugin=/mnt/pvc/x/plugin.py"], 0, "not among"),
    (["--middleware", "evil.module"], 0, "not among"),
    (["--chat-template=/proc/self/environ"], 0, "not among"),
    (["--kv-transfer-config", "{}"], 0, "not among"),
    (["--host=0.0.0.0"], 0, "set by the operator"),
    (["--port", "9"], 0, "set by the operator"),
    (["--api-key=guessable"], 0, "set by the operator"),
    (["--max-lora-rank", "512"], 0, "spec.lora.maxLoraRank"),
    (["-tp", "8"], 0, "spec.vllm.tensorParallelSize"),
    (["--enforce-eager", "/models/other"], 1, "not a flag"),  # a stray value could become the model
    (["--max-num-seqs"], 0, "needs a value"),
    (["--enforce-eager=yes"], 0, "takes no value"),
    (["--generation-config", "/mnt/pvc/m/x"], 0, "only 'auto' or 'vllm'"),
    (["--seed", "-1.5", "--trust-remote-code"], 0, "needs a value"),  # vLLM reads -1.5 as a dotted flag
    (["-q.x", "1"], 0, "not among"),
]
REFUSED_LLAMACPP = [
    (["--path", "/"], 0, "not among"),
    (["-m", "/x.gguf"], 0, "set by the operator"),
    (["--slot-save-path", "/tmp"], 0, "not among"),
    (["--api-key-file", "/k"], 0, "set by the operator"),
    (["--hf-repo", "a/b"], 0, "not among"),
    (["-hfr", "a/b"], 0, "not among"),
    (["--rpc", "10.0.0.1:50052"], 0, "not among"),
    (["--lora", "/mnt/pvc/x/a.gguf"], 0, "not among"),
    (["--batch-size=64"], 0, "does not read"),  # it would stop llama-server at start
    (["--ctx_size", "8"], 0, "spec.llamacpp.ctxSize"),
]
ACCEPTED_VLLM = [
    "--max-num-seqs=8",
    "--max_num_batched_tokens",
    "4096",
    "--enable-chunked-prefill",
    "--seed",
    "-1",
    "--override-generation-config.temperature",
    "0.2",
    "--generation-config",
    "vllm",
]
ACCEPTED_LLAMACPP = ["--batch-size", "64", "-ub", "32", "--cont-batching", "--seed", "-1", "--no-webui"]


@pytest.mark.parametrize(("args", "index", "words"), REFUSED_VLLM, ids=lambda v: str(v))
def test_vllm_flags_outside_the_allow_list_are_refused_in_every_spelling(
    args: list[str], index: int, words: str
) -> None:
    problems = refused(service(vllm={"extraArgs": ["--max-num-seqs=8", *args]}))
    at = f"spec.vllm.extraArgs[{index + 1}]"
    assert at in problems, problems
    assert words in problems[at]


@pytest.mark.parametrize(("args", "index", "words"), REFUSED_LLAMACPP, ids=lambda v: str(v))
def test_llamacpp_flags_outside_the_allow_list_are_refused(args: list[str], index: int, words: str) -> None:
    spec = service(runtime="llamacpp", model={"uri": "pvc://m/x.gguf"}, llamacpp={"extraArgs": args})
    problems = refused(spec)
    assert f"spec.llamacpp.extraArgs[{index}]" in problems, problems
    assert words in problems[f"spec.llamacpp.extraArgs[{index}]"]


def test_ordinary_tuning_flags_pass() -> None:
    assert refused(service(vllm={"extraArgs": ACCEPTED_VLLM})) == {}
    llama = service(
        runtime="llamacpp", model={"uri": "pvc://m/x.gguf"}, llamacpp={"extraArgs": ACCEPTED_LLAMACPP}
    )
    assert refused(llama) == {}


def test_the_administrator_lifts_one_flag_but_never_one_the_operator_sets() -> None:
    config = OperatorConfig.model_validate({"allow": {"extraArgs": ["--trust-remote-code", "--host"]}})
    assert refused(service(vllm={"extraArgs": ["--trust-remote-code"]}), config) == {}
    assert list(refused(service(vllm={"extraArgs": ["--host=0"]}), config)) == ["spec.vllm.extraArgs[0]"]
    denied = OperatorConfig.model_validate({"allow": {"deniedArgs": ["--seed"]}})
    assert list(refused(service(vllm={"extraArgs": ["--seed", "1"]}), denied)) == ["spec.vllm.extraArgs[0]"]


# -- environment: names on an allow-list, never the operator's, Secrets named for the purpose ---------------

REFUSED_ENV = [
    ("PYTHONPATH", "not among"),
    ("PYTHONSTARTUP", "not among"),
    ("LD_PRELOAD", "not among"),
    ("LD_LIBRARY_PATH", "not among"),
    ("VLLM_LOGGING_CONFIG_PATH", "not among"),
    ("VLLM_PLUGINS", "not among"),
    ("LLAMA_ARG_MODEL", "not among"),
    ("LLAMA_ARG_RPC", "not among"),
    ("NCCL_NET_PLUGIN", "not among"),
    ("CUDA_INJECTION64_PATH", "not among"),
    ("GCONV_PATH", "not among"),
    ("OPENSSL_CONF", "not among"),
    ("BASH_ENV", "not among"),
    ("VLLM_API_KEY", "set by the operator"),
    ("LLAMA_API_KEY", "set by the operator"),
    ("HF_TOKEN", "set by the operator"),
    ("HF_HUB_OFFLINE", "set by the operator"),
    ("HOME", "set by the operator"),
    ("TUNEOPS_LORA_MODULES_FILE", "set by the operator"),
    ("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "set by the operator"),
    ("LWS_LEADER_ADDRESS", "set by the operator"),
]


@pytest.mark.parametrize(("name", "words"), REFUSED_ENV)
def test_env_names_outside_the_allow_list_or_the_operators_own_are_refused(name: str, words: str) -> None:
    problems = refused(service(env=[{"name": "OMP_NUM_THREADS", "value": "4"}, {"name": name, "value": ""}]))
    assert list(problems) == ["spec.env[1].name"], problems
    assert words in problems["spec.env[1].name"]


def test_the_administrator_widens_env_but_never_over_the_operators_names() -> None:
    config = OperatorConfig.model_validate({"allow": {"env": ["OTEL_*", "VLLM_*"]}})
    assert refused(service(env=[{"name": "OTEL_SERVICE_NAME", "value": "x"}]), config) == {}
    assert list(refused(service(env=[{"name": "VLLM_API_KEY", "value": ""}]), config)) == ["spec.env[0].name"]


def test_env_reads_only_secrets_listed_for_env() -> None:
    def ref(secret: str) -> dict[str, Any]:
        return {"name": "OMP_NUM_THREADS", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}

    # A Secret named as the model's token (even on a pvc:// model, which never uses it) is not env's.
    borrowed = service(model={"uri": "pvc://m/x", "tokenSecretRef": {"name": "hf"}}, env=[ref("hf")])
    assert list(refused(borrowed)) == ["spec.env[0].valueFrom.secretKeyRef.name"]
    key = service(apiKeySecretRef={"name": "api", "key": "k"}, env=[ref("api")])
    assert list(refused(key)) == ["spec.env[0].valueFrom.secretKeyRef.name"]
    assert refused(service(envSecrets=["app-settings"], env=[ref("app-settings")])) == {}


@pytest.mark.parametrize(
    "value_from",
    [
        {"secretKeyRef": {"name": ["app"], "key": "k"}},
        {"secretKeyRef": {"name": {"x": 1}, "key": "k"}},
        {"secretKeyRef": ["app"]},
        {"secretKeyRef": {"name": "app"}},
        {"configMapKeyRef": {"name": 3, "key": "k"}},
        {"fieldRef": {"fieldPath": None}},
        {"fieldRef": {"fieldPath": "metadata.name"}, "secretKeyRef": {"name": "app", "key": "k"}},
        {},
    ],
    ids=str,
)
def test_malformed_env_sources_are_refused_not_crashed_on(value_from: dict[str, Any]) -> None:
    spec = service(envSecrets=["app"], env=[{"name": "TZ", "valueFrom": value_from}])
    problems = refused(spec)
    assert len(problems) == 1 and next(iter(problems)).startswith("spec.env[0].valueFrom"), problems


def test_a_spec_value_never_replaces_the_operators_in_the_rendered_pod() -> None:
    """Defence in depth: even a spec that slipped past the refusal renders the operator's API key."""
    spec = service(
        apiKeySecretRef={"name": "api", "key": "k"},
        env=[{"name": "VLLM_API_KEY", "value": ""}, {"name": "TZ", "value": "UTC"}],
    )
    manifests = render_inferenceservice(spec, OWNER, OperatorConfig(), model=MODEL).manifests
    container = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"key": "k", "name": "api"}
    assert env["TZ"]["value"] == "UTC"


def test_only_the_configured_images_by_default() -> None:
    config = OperatorConfig()
    assert refused(service(image=config.images.vllm)) == {}
    assert list(refused(service(image="evil.example/vllm:latest"))) == ["spec.image"]
    allowed = OperatorConfig.model_validate({"allow": {"images": ["registry.example/ml/*"]}})
    assert refused(service(image="registry.example/ml/vllm:1"), allowed) == {}
    assert list(refused(service(image="registry.example/other/vllm:1"), allowed)) == ["spec.image"]


def test_service_accounts_and_priority_classes_need_the_administrators_consent() -> None:
    spec = service(serviceAccountName="cluster-admin-bot", priorityClassName="system-cluster-critical")
    assert set(refused(spec)) == {"spec.serviceAccountName", "spec.priorityClassName"}
    config = OperatorConfig.model_validate(
        {"allow": {"serviceAccounts": ["model-reader"], "priorityClasses": ["inference-*"]}}
    )
    ok = service(serviceAccountName="model-reader", priorityClassName="inference-high")
    assert refused(ok, config) == {}
    pod = render_inferenceservice(ok, OWNER, config, model=MODEL).manifests
    template = next(m for m in pod if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert template["serviceAccountName"] == "model-reader" and template["automountServiceAccountToken"]
    plain = render_inferenceservice(service(), OWNER, config, model=MODEL).manifests
    template = next(m for m in plain if m["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert "serviceAccountName" not in template and template["automountServiceAccountToken"] is False


def test_a_worker_job_gets_the_same_rules() -> None:
    row = Row(
        "job",
        FTM_HEAD
        + "metadata: {name: tuned}\nspec: {baseModel: {uri: 'hf://org/b'}, adapter: {uri: 'hf://org/a'},"
        " job: {image: 'evil.example/w:1', serviceAccountName: admin}}\n",
    )
    ready = {c["type"]: c for c in operator_verdict(row)["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", Reason.NOT_ALLOWED)
    assert "spec.job.image" in ready["message"] and "spec.job.serviceAccountName" in ready["message"]


def test_validate_refuses_with_the_operator_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "svc.yaml"
    path.write_text(
        IS_HEAD + "metadata: {name: svc}\nspec: {model: {uri: 'hf://o/m'}, image: 'r.example/v:1'}\n"
    )
    assert main(["validate", "-f", str(path)]) == 2
    assert "spec.image: image 'r.example/v:1' is not allowed" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"allow": {"images": ["r.example/*"]}}))
    assert main(["validate", "-f", str(path), "--config", str(config)]) == 0


# -- the runtime LoRA API ------------------------------------------------------------------------------------

ADAPTERS = [ResolvedAdapter(name="a", uri="pvc://adapters/a")]
LORA = {"lora": {"adapters": [{"name": "a", "uri": "pvc://adapters/a"}]}}


def rendered(spec: InferenceServiceSpec, config: OperatorConfig) -> tuple[list[dict[str, Any]], str]:
    r = render_inferenceservice(spec, OWNER, config, model=MODEL, adapters=ADAPTERS)
    (secured,) = [n for n in r.notes if n.type == SECURED]
    return [m for m in r.manifests if m["kind"] == "NetworkPolicy"], secured.reason


def test_runtime_loading_without_a_key_is_behind_a_network_policy() -> None:
    config = OperatorConfig(operator_namespace="tuneops-system")
    policies, reason = rendered(service(**LORA, clientNamespaces=["apps"]), config)
    assert reason == Reason.NETWORK_POLICY
    (policy,) = policies
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    (from_namespaces, from_peers) = spec["ingress"]
    selector = from_namespaces["from"][0]["namespaceSelector"]["matchExpressions"][0]
    assert selector["key"] == "kubernetes.io/metadata.name"
    assert selector["values"] == ["apps", "team-a", "tuneops-system"]
    # The server Pods themselves (a LeaderWorkerSet's group over Ray), and nothing else.
    assert from_peers["from"] == [{"podSelector": spec["podSelector"]}]
    validate(policy)
    check_golden("inferenceservice-network-policy", [policy])


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({**LORA, "apiKeySecretRef": {"name": "key"}}, Reason.API_KEY),
        ({"lora": {**LORA["lora"], "dynamic": False}}, Reason.NO_RUNTIME_API),
        ({}, Reason.NO_RUNTIME_API),
    ],
)
def test_no_policy_where_a_key_or_no_runtime_api_protects(spec: dict[str, Any], reason: str) -> None:
    adapters = ADAPTERS if "lora" in spec else []
    r = render_inferenceservice(service(**spec), OWNER, OperatorConfig(), model=MODEL, adapters=adapters)
    assert not [m for m in r.manifests if m["kind"] == "NetworkPolicy"]
    assert [n.reason for n in r.notes if n.type == SECURED] == [reason]


# -- the API key Secret ----------------------------------------------------------------------------------


class SecretsForbidden(MemoryKube):
    """An API server where the operator's ServiceAccount may not read Secrets (rbac.readSecrets false)."""

    secret_reads = 0

    def get(self, rtype: k.ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        if rtype.kind == "Secret":
            self.secret_reads += 1
            raise k.ApiError(
                403, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}", '{"reason":"Forbidden"}'
            )
        return super().get(rtype, namespace, name)


def reconcile_service(spec: dict[str, Any]) -> tuple[dict[str, Any], SecretsForbidden]:
    doc = yaml.safe_load(IS_HEAD + "metadata: {name: svc}\n")
    doc["spec"] = spec
    obj = _on_cluster(doc, 0)
    kube = SecretsForbidden([obj])
    RECONCILERS["InferenceService"](
        Context(kube=cast(k.Kube, kube), config=OperatorConfig()), copy.deepcopy(obj)
    )
    status = kube.status[("InferenceService", "default", "svc")]
    return {c["type"]: c for c in status["conditions"]}, kube


def test_a_forbidden_secret_is_a_condition_naming_the_chart_value() -> None:
    conds, _ = reconcile_service(
        {"model": {"uri": "pvc://m/base"}, "apiKeySecretRef": {"name": "key"}, **LORA}
    )
    ready = conds["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", Reason.SECRET_UNREADABLE)
    assert "rbac.readSecrets" in ready["message"] and "default/key" in ready["message"]


def test_the_secret_is_read_only_to_call_the_lora_api() -> None:
    conds, kube = reconcile_service({"model": {"uri": "pvc://m/base"}, "apiKeySecretRef": {"name": "key"}})
    assert kube.secret_reads == 0
    assert conds["Ready"]["reason"] != Reason.SECRET_UNREADABLE
    assert conds[SECURED]["reason"] == Reason.API_KEY


# The deny-list of the previous release: the allow-list refuses every one of them by default, in both runtimes.
PREVIOUS_DENY_LIST = [
    "--trust-remote-code", "--middleware", "--tool-parser-plugin", "--logits-processors", "--worker-cls",
    "--worker-extension-cls", "--allowed-local-media-path", "--chat-template", "--chat-template-file",
    "--download-dir", "--path", "--slot-save-path", "--log-file", "--ssl-keyfile", "--ssl-certfile", "--model", "-m",
    "--model-url", "-mu", "--hf-repo", "--hf-token", "-hf", "-hfr", "--lora-modules", "--api-key", "--api-key-file",
    "--host", "--port", "--uds", "--rpc",
]  # fmt: skip


@pytest.mark.parametrize("flag", PREVIOUS_DENY_LIST)
def test_the_defaults_are_no_weaker_than_the_previous_deny_list(flag: str) -> None:
    vllm = refused(service(vllm={"extraArgs": [flag, "x"]}))
    llama = refused(
        service(runtime="llamacpp", model={"uri": "pvc://m/x.gguf"}, llamacpp={"extraArgs": [flag, "x"]})
    )
    assert "spec.vllm.extraArgs[0]" in vllm and "spec.llamacpp.extraArgs[0]" in llama
