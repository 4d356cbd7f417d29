"""Ambient credentials: an s3:// source with no Secret of its own does not silently use the Pod's or node's AWS
identity. The operator refuses such a spec unless its config allows ambient credentials, the renderer tells the
worker when it does, and the worker otherwise never consults boto3's default credential chain (its requests
are unsigned, and an access denied says what to do).

S3 runs on moto's server with IAM enforced (loopback, stopped by PID); workers run as their CLI does in a Job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.workers.conftest import run_cli
from tests.workers.test_remote import _client, moto_server
from tuneops.api import parse_spec
from tuneops.api.conditions import Reason
from tuneops.config import OperatorConfig
from tuneops.render import Owner
from tuneops.render.finetunedmodel import render_inspect_job
from tuneops.render.serving import render_inferenceservice
from tuneops.render.types import ResolvedModel
from tuneops.storage import credentials, remote
from tuneops.storage.uri import parse_uri
from tuneops.validation.credentials import check_credentials, check_source_credentials

DENY = OperatorConfig()
ALLOW = OperatorConfig(allow_ambient_credentials=True)
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tuneops"


def spec(kind: str, body: dict[str, Any]) -> Any:
    return parse_spec(kind, {"kind": kind, "metadata": {"name": "x"}, "spec": body})


def owner(kind: str) -> Owner:
    return Owner("tuneops.io/v1alpha1", kind, "x", "team-a", "3f1c0d52-6a2b-4c1e-9d7a-0b8e5f4a2c11")


SECRET = {"name": "team-s3"}
FTM = {
    "baseModel": {"uri": "hf://org/base@main"},
    "adapter": {"uri": "s3://team/adapters/a1"},
    "output": {"uri": "s3://team/merged/m1"},
}
QJOB = {
    "source": {"uri": "s3://team/merged/m1"},
    "method": "awq",
    "awq": {"calibration": {"datasetUri": "s3://team/data/cal.jsonl"}},
    "qualityGate": {"maxPerplexityIncreasePct": 5, "evalDatasetUri": "s3://team/data/eval.jsonl"},
    "output": {"uri": "s3://team/awq/m1"},
}
ISVC = {"model": {"uri": "s3://team/models/m1"}}


# ---------------------------------------------------------------------------------------- the refusal


@pytest.mark.parametrize(
    ("kind", "body", "fields"),
    [
        ("FineTunedModel", FTM, ["spec.adapter.uri", "spec.output.uri"]),
        ("QuantizationJob", QJOB, ["spec.source.uri", "spec.awq.calibration.datasetUri",
                                   "spec.qualityGate.evalDatasetUri", "spec.output.uri"]),
        ("InferenceService", ISVC, ["spec.model.uri"]),
    ],
)  # fmt: skip
def test_an_s3_source_without_a_secret_is_refused_unless_the_config_allows_ambient_credentials(
    kind: str, body: dict[str, Any], fields: list[str]
) -> None:
    problems = check_credentials(spec(kind, body), DENY)
    assert [p.field for p in problems] == fields
    for p in problems:
        assert p.reason == Reason.NOT_ALLOWED
        where = p.field.rsplit(".", 1)[0] + ".tokenSecretRef"
        assert "s3://team/" in p.message and where in p.message
        assert "config.allowAmbientCredentials" in p.message
    assert check_credentials(spec(kind, body), ALLOW) == []


def test_a_source_with_its_own_secret_or_another_scheme_is_not_refused() -> None:
    with_secrets = json.loads(json.dumps(QJOB))
    for part in (with_secrets["source"], with_secrets["awq"]["calibration"], with_secrets["qualityGate"],
                 with_secrets["output"]):  # fmt: skip
        part["tokenSecretRef"] = SECRET
    assert check_credentials(spec("QuantizationJob", with_secrets), DENY) == []
    local = {"baseModel": {"uri": "hf://org/base@main"}, "adapter": {"uri": "pvc://adapters/a1"}}
    assert check_credentials(spec("FineTunedModel", local), DENY) == []


def test_an_output_left_to_an_s3_artifact_root_needs_a_secret_too() -> None:
    body = {"baseModel": {"uri": "hf://org/base@main"}, "adapter": {"uri": "pvc://adapters/a1"}}
    root = OperatorConfig(artifact_root="s3://shared/artifacts")
    (problem,) = check_credentials(spec("FineTunedModel", body), root)
    assert (problem.field, problem.reason) == ("spec.output", Reason.NOT_ALLOWED)
    assert "s3://shared/artifacts" in problem.message and "spec.output.tokenSecretRef" in problem.message
    allowed = OperatorConfig(artifact_root="s3://shared/artifacts", allow_ambient_credentials=True)
    assert check_credentials(spec("FineTunedModel", body), allowed) == []


def test_a_resolved_reference_is_checked_the_same_way() -> None:
    problem = check_source_credentials("spec.source.fineTunedModelRef", "s3://team/merged/m1/0123", None, DENY,
                                       secret_field="spec.source.tokenSecretRef")  # fmt: skip
    assert problem is not None and problem.reason == Reason.NOT_ALLOWED
    assert "spec.source.tokenSecretRef" in problem.message
    assert check_source_credentials("spec.source.fineTunedModelRef", "s3://t/m", None, ALLOW) is None


def test_the_option_is_off_by_default() -> None:
    assert OperatorConfig().allow_ambient_credentials is False
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"]["allowAmbientCredentials"] is False
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["config"]["properties"]["allowAmbientCredentials"] == {"type": "boolean"}


def test_the_chart_value_reaches_the_operator_config(tmp_path: Path) -> None:
    from tests.unit.chart_support import one, template

    for value in (False, True):
        docs = template({"config": {"allowAmbientCredentials": value}}, tmp_path)
        cm = one(docs, "ConfigMap", "tuneops-config")
        cfg = OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
        assert cfg.allow_ambient_credentials is value


# --------------------------------------------------------------------------------------- the renderer


def env_names(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_the_worker_is_told_only_when_ambient_credentials_are_allowed() -> None:
    ftm = spec("FineTunedModel", FTM)
    for config, expected in ((DENY, None), (ALLOW, "1")):
        job = render_inspect_job(ftm, owner("FineTunedModel"), config)
        (worker,) = job["spec"]["template"]["spec"]["containers"]
        assert env_names(worker).get(credentials.AMBIENT_ENV) == expected
    isvc = spec("InferenceService", {**ISVC, "model": {**ISVC["model"], "tokenSecretRef": SECRET}})
    model = ResolvedModel(uri="s3://team/models/m1", digest="sha256:m")
    for config, expected in ((DENY, None), (ALLOW, "1")):
        rendered = render_inferenceservice(isvc, owner("InferenceService"), config, model=model)
        deployment = next(m for m in rendered.manifests if m["kind"] == "Deployment")
        (fetch,) = deployment["spec"]["template"]["spec"]["initContainers"]
        assert env_names(fetch).get(credentials.AMBIENT_ENV) == expected
    # No s3:// source: nothing to say, whatever the config.
    local = spec("FineTunedModel", {"baseModel": {"uri": "hf://org/b@main"}, "adapter": {"uri": "pvc://a/b"}})
    job = render_inspect_job(local, owner("FineTunedModel"), ALLOW)
    assert credentials.AMBIENT_ENV not in env_names(job["spec"]["template"]["spec"]["containers"][0])


# ----------------------------------------------------------------------------------------- the worker

AMBIENT_ENV_KEYS = {
    "AWS_ACCESS_KEY_ID": "AKIAAMBIENTNODE",
    "AWS_SECRET_ACCESS_KEY": "ambient-node-secret",
    "AWS_SESSION_TOKEN": "ambient-session",
}


def test_a_client_without_keys_never_consults_the_default_chain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import botocore.credentials
    from botocore import UNSIGNED

    for k, v in AMBIENT_ENV_KEYS.items():
        monkeypatch.setenv(k, v)
    creds_file = tmp_path / "credentials"
    creds_file.write_text("[default]\naws_access_key_id = AKIAFILE\naws_secret_access_key = file-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds_file))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv(credentials.AMBIENT_ENV, raising=False)
    monkeypatch.delenv(credentials.CREDENTIALS_ENV, raising=False)

    def no_chain(*_: Any, **__: Any) -> Any:
        raise AssertionError("boto3's default credential chain was consulted")

    monkeypatch.setattr(botocore.credentials, "create_credential_resolver", no_chain)
    client = remote._s3(parse_uri("s3://team/adapters/a1"))
    assert client.meta.config.signature_version is UNSIGNED
    assert client._request_signer._credentials is None
    # A source whose Secret holds only an endpoint and a region: no keys, so unsigned too.
    monkeypatch.setenv(credentials.CREDENTIALS_ENV, json.dumps({"s3://team/adapters": "adapter"}))
    monkeypatch.setenv("TUNEOPS_ADAPTER_AWS_REGION", "eu-west-1")
    client = remote._s3(parse_uri("s3://team/adapters/a1"))
    assert client.meta.config.signature_version is UNSIGNED and client.meta.region_name == "eu-west-1"
    # With its Secret's keys: those keys, and still no chain.
    monkeypatch.setenv("TUNEOPS_ADAPTER_AWS_ACCESS_KEY_ID", "AKIASECRET")
    monkeypatch.setenv("TUNEOPS_ADAPTER_AWS_SECRET_ACCESS_KEY", "secret-of-the-source")
    client = remote._s3(parse_uri("s3://team/adapters/a1"))
    assert client._request_signer._credentials.access_key == "AKIASECRET"


def test_with_ambient_credentials_allowed_the_default_chain_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    # The default session caches what its chain found first (in a worker, the environment does not change).
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    for k, v in AMBIENT_ENV_KEYS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv(credentials.CREDENTIALS_ENV, raising=False)
    monkeypatch.setenv(credentials.AMBIENT_ENV, "1")
    client = remote._s3(parse_uri("s3://team/adapters/a1"))
    assert client._request_signer._credentials.access_key == "AKIAAMBIENTNODE"


@pytest.fixture(scope="module")
def guarded_s3() -> Iterator[tuple[dict[str, str], tuple[str, str]]]:
    """moto with a private bucket holding a model: signed requests read it, anonymous (unsigned) ones are denied
    (moto checks a bucket's ACL for anonymous requests; its IAM enforcement fails on unsigned ones with a 500,
    so it stays off, and any keys stand for an identity that may read the bucket)."""
    with moto_server() as env:
        client = _client(env)
        client.create_bucket(Bucket="private-models")
        client.put_object(Bucket="private-models", Key="m1/config.json", Body=b'{"model_type": "llama"}')
        client.put_object(Bucket="private-models", Key="m1/model.safetensors", Body=b"w" * 1024)
        yield env, ("AKIANODEIDENTITY", "node-identity-secret")


def _fetch(
    env: dict[str, str], tmp_path: Path, name: str, extra: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    log = tmp_path / f"{name}.log"
    base = {
        "AWS_ENDPOINT_URL": env["AWS_ENDPOINT_URL"],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        credentials.AMBIENT_ENV: "",
        credentials.CREDENTIALS_ENV: "",
        "TUNEOPS_TERMINATION_LOG": str(log),
        "TUNEOPS_WORKDIR": str(tmp_path / name / "work"),
    }
    r = run_cli("fetch", "--source", "s3://private-models/m1", "--dest", str(tmp_path / name / "model"),
                env={**base, **extra})  # fmt: skip
    return r.returncode, json.loads(log.read_text())


def test_the_worker_does_not_use_the_pods_identity_unless_allowed(
    guarded_s3: tuple[dict[str, str], tuple[str, str]], tmp_path: Path
) -> None:
    """The node's identity (here: keys in the plain environment, where boto3's chain finds them first) can read
    the private bucket. Not allowed, the worker does not use it: its unsigned request is denied, and the message says
    what to do. Allowed, the same worker reads the model."""
    env, (key_id, secret) = guarded_s3
    node = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    rc, msg = _fetch(env, tmp_path, "denied", node)
    assert rc == 2, msg
    assert "access denied to an unsigned (anonymous) request" in msg["error"]
    assert "tokenSecretRef" in msg["error"] and "config.allowAmbientCredentials" in msg["error"]
    assert not list((tmp_path / "denied" / "model").glob("*.safetensors"))
    rc, msg = _fetch(env, tmp_path, "allowed", {**node, credentials.AMBIENT_ENV: "1"})
    assert rc == 0, msg
    assert (tmp_path / "allowed" / "model" / "model.safetensors").read_bytes() == b"w" * 1024
    # The source's own Secret (what the renderer passes) works without ambient credentials.
    own = {
        credentials.CREDENTIALS_ENV: json.dumps({"s3://private-models/m1": "model"}),
        "TUNEOPS_MODEL_AWS_ACCESS_KEY_ID": key_id,
        "TUNEOPS_MODEL_AWS_SECRET_ACCESS_KEY": secret,
    }
    rc, msg = _fetch(env, tmp_path, "secret", own)
    assert rc == 0, msg
    # A Secret with no keys does not open the way to the ambient identity either.
    endpoint_only = {
        **node,
        credentials.CREDENTIALS_ENV: json.dumps({"s3://private-models/m1": "model"}),
        "TUNEOPS_MODEL_AWS_REGION": "us-east-1",
    }
    rc, msg = _fetch(env, tmp_path, "endpoint-only", endpoint_only)
    assert rc == 2 and "access denied to an unsigned" in msg["error"], msg
