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
from tuneops.checks import check_pod_policy
from tuneops.cli import main
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile import RECONCILERS
from tuneops.reconcile.base import Context
from tuneops.render import Owner, ResolvedAdapter, ResolvedModel
from tuneops.render.serving import render_inferenceservice

OWNER = Owner(API_VERSION, "InferenceService", "svc", "team-a", "uid-1")
MODEL = ResolvedModel(uri="pvc://models/base")


def service(**spec: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/base"}, **spec})


def refused(spec: InferenceServiceSpec, config: OperatorConfig | None = None) -> dict[str, str]:
    return {p.field: p.message for p in check_pod_policy(spec, config or OperatorConfig())}


# -- server arguments --------------------------------------------------------------------------------------

DENIED_VLLM = [
    "--trust-remote-code",
    "--trust_remote_code",
    "--trust-remote-code=true",
    "--trust-remote",  # argparse takes an unambiguous prefix
    "--host=0.0.0.0",
    "--port",
    "--api-key=guessable",
    "--ssl-keyfile=/etc/ssl/private/key.pem",
    "--allowed-local-media-path=/",
    "--chat-template=/proc/self/environ",
    "--middleware=evil.module",
    "--tool-parser-plugin=/mnt/pvc/x/plugin.py",
    "--lora-modules",
]
DENIED_LLAMACPP = ["--path", "-m", "--slot-save-path=/tmp", "--api-key-file", "--hf-repo", "-hfr", "--rpc"]
ACCEPTED = [
    "--max-num-seqs=8",
    "--enable-chunked-prefill",
    "8",
    "--chat-template-content-format=openai",
    "-1",
]


@pytest.mark.parametrize("arg", DENIED_VLLM)
def test_vllm_flags_that_load_code_read_files_or_move_the_server_are_refused(arg: str) -> None:
    problems = refused(service(vllm={"extraArgs": ["--max-num-seqs=8", arg]}))
    assert list(problems) == ["spec.vllm.extraArgs[1]"], problems
    assert "allow.extraArgs" in problems["spec.vllm.extraArgs[1]"]


@pytest.mark.parametrize("arg", DENIED_LLAMACPP)
def test_llamacpp_flags_that_read_or_write_files_are_refused(arg: str) -> None:
    spec = service(runtime="llamacpp", model={"uri": "pvc://m/x.gguf"}, llamacpp={"extraArgs": [arg]})
    assert list(refused(spec)) == ["spec.llamacpp.extraArgs[0]"]


def test_ordinary_tuning_flags_pass() -> None:
    assert refused(service(vllm={"extraArgs": ACCEPTED})) == {}


def test_the_administrator_lifts_one_flag() -> None:
    config = OperatorConfig.model_validate({"allow": {"extraArgs": ["--trust-remote-code"]}})
    assert refused(service(vllm={"extraArgs": ["--trust-remote-code"]}), config) == {}
    assert list(refused(service(vllm={"extraArgs": ["--host=0"]}), config)) == ["spec.vllm.extraArgs[0]"]


# -- images, identities, priorities, env ---------------------------------------------------------------------


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


def test_env_reads_only_the_secrets_the_spec_names() -> None:
    own = {"name": "T", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    other = {
        "name": "S",
        "valueFrom": {"secretKeyRef": {"name": "team-b-aws", "key": "AWS_SECRET_ACCESS_KEY"}},
    }
    spec = service(model={"uri": "hf://org/m", "tokenSecretRef": {"name": "hf"}}, env=[own, other])
    assert list(refused(spec)) == ["spec.env[1].valueFrom.secretKeyRef"]


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
