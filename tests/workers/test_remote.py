"""Remote storage: an S3 round trip against moto's server, and Hub downloads from a local endpoint that fails
once with a 5xx."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import run_cli
from tuneops import storage
from tuneops.local import objectstore

pytestmark = pytest.mark.workers


@contextlib.contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """moto in server mode on a free loopback port (tuneops.local.objectstore), with the environment that points
    boto3 at it."""
    with objectstore.moto_server() as env:
        # The keys are the process's own environment, which a worker uses for a source without a Secret only
        # when ambient credentials are allowed (else its requests are unsigned).
        yield {**env, "TUNEOPS_AMBIENT_CREDENTIALS": "1"}


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with moto_server() as env:
        yield env


def _client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def _upload_dir(client: Any, local: Path, bucket: str, prefix: str) -> None:
    for p in sorted(local.rglob("*")):
        if p.is_file():
            client.upload_file(str(p), bucket, f"{prefix}/{p.relative_to(local).as_posix()}")


def test_s3_round_trip(
    s3_env: dict[str, str], models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = _client(s3_env)
    client.create_bucket(Bucket="models")
    _upload_dir(client, models["llama"], "models", "base/llama")
    _upload_dir(client, models["llama-lora"], "models", "adapters/a1")
    log = tmp_path / "log"
    env = {**s3_env, "TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_WORKDIR": str(tmp_path / "work")}
    args = (
        "merge",
        "--base",
        "s3://models/base/llama",
        "--adapter",
        "s3://models/adapters/a1",
        "--output",
        "s3://models/merged/m1",
    )
    r = run_cli(*args, "--dtype", "float32", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    art = json.loads(log.read_text())["artifact"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="models", Prefix="merged/m1/")["Contents"])
    # Published in a folder named after its digest, which is the URI reported; the prefix points at it.
    folder = "merged/m1/" + art["digest"].removeprefix("sha256:")[:16]
    assert art["uri"] == f"s3://models/{folder}"
    assert f"{folder}/tuneops-artifact.json" in keys and f"{folder}/config.json" in keys
    assert "merged/m1/tuneops-current.json" in keys
    # Download it back through the storage layer: same digest as reported, same bytes as a local merge.
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TUNEOPS_WORKDIR", str(tmp_path / "work2"))
    back = storage.fetch("s3://models/merged/m1")
    manifest = storage.read_manifest(back)
    assert manifest is not None and manifest.digest == art["digest"]
    assert storage.verify(back, manifest) == []
    local = run_cli("merge", "--base", str(models["llama"]), "--adapter", str(models["llama-lora"]),
                    "--output", str(tmp_path / "local"), "--dtype", "float32", env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert local.returncode == 0
    assert json.loads(log.read_text())["artifact"]["digest"] == art["digest"]
    # A second run finds the complete artifact in the bucket and reuses it.
    again = run_cli(*args, "--dtype", "float32", env={**env, "TUNEOPS_TERMINATION_LOG": str(log)})
    assert again.returncode == 0
    assert json.loads(log.read_text())["artifact"]["reused"] is True


def test_s3_missing_prefix_fails_clearly(s3_env: dict[str, str], tmp_path: Path) -> None:
    _client(s3_env).create_bucket(Bucket="empty")
    log = tmp_path / "log"
    r = run_cli("inspect", "--adapter", "s3://empty/nothing/here",
                env={**s3_env, "TUNEOPS_TERMINATION_LOG": str(log), "TUNEOPS_WORKDIR": str(tmp_path)})  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "s3://empty/nothing/here: no such object or prefix" in json.loads(log.read_text())["error"]


def _moto_auth(env: dict[str, str], actions_before_enforcing: str) -> None:
    """Turns moto's IAM enforcement on ("0") or off ("inf") for everything after this call."""
    req = urllib.request.Request(
        f"{env['AWS_ENDPOINT_URL']}/moto-api/reset-auth",
        data=actions_before_enforcing.encode(),
        method="POST",
        # A form content type (urllib's default) would leave the body empty on moto's side.
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


def _reader(env: dict[str, str], user: str, bucket: str) -> tuple[str, str]:
    """An IAM user that may read one bucket and nothing else; its access key."""
    import boto3

    iam = boto3.client("iam", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                       aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"],
                       "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}],
    }  # fmt: skip
    iam.put_user_policy(UserName=user, PolicyName=f"read-{bucket}", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


def test_base_and_adapter_are_read_each_with_their_own_credentials(
    s3_env: dict[str, str], models: dict[str, Path], tmp_path: Path
) -> None:
    """What the renderer gives a merge Job whose base and adapter name different Secrets: the base's bucket
    is readable only with the base's keys, the adapter's only with the adapter's, and the worker reads both."""
    client = _client(s3_env)
    client.create_bucket(Bucket="team-a-base")
    client.create_bucket(Bucket="team-b-adapters")
    _upload_dir(client, models["llama"], "team-a-base", "llama")
    _upload_dir(client, models["llama-lora"], "team-b-adapters", "a1")
    key_a = _reader(s3_env, "reader-a", "team-a-base")
    key_b = _reader(s3_env, "reader-b", "team-b-adapters")
    base, adapter = "s3://team-a-base/llama", "s3://team-b-adapters/a1"
    log = tmp_path / "log"

    def merge(
        base_key: tuple[str, str], adapter_key: tuple[str, str], out: str
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "AWS_ENDPOINT_URL": s3_env["AWS_ENDPOINT_URL"],
            "AWS_DEFAULT_REGION": "us-east-1",
            # No usable plain keys: a source without its own credentials would be refused.
            "AWS_ACCESS_KEY_ID": "nobody",
            "AWS_SECRET_ACCESS_KEY": "nobody",
            "TUNEOPS_CREDENTIALS": json.dumps({base: "base", adapter: "adapter"}),
            "TUNEOPS_BASE_AWS_ACCESS_KEY_ID": base_key[0],
            "TUNEOPS_BASE_AWS_SECRET_ACCESS_KEY": base_key[1],
            "TUNEOPS_ADAPTER_AWS_ACCESS_KEY_ID": adapter_key[0],
            "TUNEOPS_ADAPTER_AWS_SECRET_ACCESS_KEY": adapter_key[1],
            "TUNEOPS_TERMINATION_LOG": str(log),
            "TUNEOPS_WORKDIR": str(tmp_path / out / "work"),
        }
        return run_cli("merge", "--base", base, "--adapter", adapter, "--output", str(tmp_path / out),
                       "--dtype", "float32", env=env)  # fmt: skip

    _moto_auth(s3_env, "0")
    try:
        ok = merge(key_a, key_b, "merged")
        assert ok.returncode == 0, ok.stderr[-3000:]
        assert json.loads(log.read_text())["artifact"]["format"] == "safetensors"
        # The base's keys do not open the adapter's bucket: one Secret for every source would fail here.
        denied = merge(key_a, key_a, "denied")
        assert denied.returncode != 0
        assert "AccessDenied" in json.loads(log.read_text())["error"] or "403" in denied.stderr
    finally:
        _moto_auth(s3_env, "inf")


def test_a_uri_gets_the_credentials_of_its_own_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from tuneops.storage import credentials

    monkeypatch.setenv("HF_TOKEN", "plain")
    monkeypatch.setenv("TUNEOPS_CREDENTIALS", json.dumps(
        {"hf://org/base@main": "base", "s3://b/adapters": "adapter", "s3://b/adapters/special": "output"}))  # fmt: skip
    monkeypatch.setenv("TUNEOPS_BASE_HF_TOKEN", "base-token")
    monkeypatch.setenv("TUNEOPS_ADAPTER_AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("TUNEOPS_ADAPTER_AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("TUNEOPS_ADAPTER_AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("TUNEOPS_OUTPUT_AWS_REGION", "eu-west-1")
    assert credentials.hf_token("hf://org/base@main") == "base-token"
    assert credentials.hf_token("hf://org/base@main/config.json") == "base-token"  # a file inside the source
    assert credentials.hf_token("hf://org/other") == "plain"  # no Secret named for it: the plain environment
    assert credentials.s3_client_args("s3://b/adapters/a1.gguf") == {
        "aws_access_key_id": "AK", "aws_secret_access_key": "SK", "aws_session_token": None,
        "endpoint_url": "http://minio:9000",
    }  # fmt: skip
    # The longest matching source wins; a sibling prefix is not inside the source.
    assert credentials.s3_client_args("s3://b/adapters/special/x") == {"region_name": "eu-west-1"}
    assert credentials.s3_client_args("s3://b/adapters-old") == {}
    monkeypatch.delenv("TUNEOPS_ADAPTER_AWS_SECRET_ACCESS_KEY")
    with pytest.raises(storage.InputError, match="AWS_ACCESS_KEY_ID but no AWS_SECRET_ACCESS_KEY"):
        credentials.s3_client_args("s3://b/adapters")


class FakeHub:
    """The routes huggingface_hub uses to download a repo: revision info, tree listing, resolve (HEAD/GET)."""

    def __init__(self, repo: str, files: dict[str, bytes], fail_first: str) -> None:
        self.repo = repo
        self.files = files
        self.sha = hashlib.sha1(b"".join(sorted(files.values()))).hexdigest()
        self.fail_first = fail_first
        self.failures = 0
        self.requests: list[str] = []
        self.tokens: set[str] = set()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(
            self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
        ) -> None:
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _route(self, head: bool) -> None:
            path = self.path.split("?")[0]
            hub.requests.append(f"{self.command} {path}")
            auth = self.headers.get("Authorization", "")
            if auth:
                hub.tokens.add(auth)
            api = f"/api/models/{hub.repo}/"
            if path.startswith(api + "revision/"):
                body = {"id": hub.repo, "sha": hub.sha, "siblings": [{"rfilename": f} for f in hub.files]}
                return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            if path.startswith(api + "tree/"):
                body = [
                    {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                    for f, d in sorted(hub.files.items())
                ]
                return self._send(200, json.dumps(body).encode(), {"Content-Type": "application/json"}, head)
            prefix = f"/{hub.repo}/resolve/"
            if path.startswith(prefix):
                _rev, _, name = path[len(prefix) :].partition("/")
                if name not in hub.files:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                if name == hub.fail_first and not head and hub.failures == 0:
                    hub.failures += 1
                    return self._send(503, b"try again", {}, head)
                data = hub.files[name]
                headers = {"X-Repo-Commit": hub.sha, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                return self._send(200, data, headers, head)
            return self._send(404, b"", {"X-Error-Code": "RepoNotFound"}, head)

        def do_GET(self) -> None:
            self._route(head=False)

        def do_HEAD(self) -> None:
            self._route(head=True)

    return Handler


@contextlib.contextmanager
def serving_hub(repo: str, files: dict[str, bytes], fail_first: str = "") -> Iterator[tuple[FakeHub, str]]:
    """A FakeHub for `repo` on a loopback port, and its endpoint; stopped on exit."""
    hub = FakeHub(repo, files, fail_first=fail_first)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def fake_hub(models: dict[str, Path]) -> Iterator[tuple[FakeHub, str]]:
    files = {p.name: p.read_bytes() for p in models["llama-lora"].iterdir() if p.is_file()}
    with serving_hub("acme/tiny-lora", files, fail_first="adapter_model.safetensors") as served:
        yield served


def test_hf_download_retries_a_transient_5xx(
    fake_hub: tuple[FakeHub, str], models: dict[str, Path], tmp_path: Path
) -> None:
    hub, endpoint = fake_hub
    log = tmp_path / "log"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": "hf_test_token",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "TUNEOPS_WORKDIR": str(tmp_path / "work"),
        "TUNEOPS_BACKOFF_S": "0.2",
        "TUNEOPS_TERMINATION_LOG": str(log),
    }
    r = run_cli(
        "inspect", "--adapter", f"hf://acme/tiny-lora@{hub.sha}", "--base", str(models["llama"]), env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert hub.failures == 1, "the injected 503 was served"
    msg = json.loads(log.read_text())
    assert msg["problems"] == [] and msg["adapter"]["rank"] == 8
    assert msg["artifact"]["digest"] == storage.digest_of(models["llama-lora"])
    assert hub.tokens == {"Bearer hf_test_token"}, "the token from the environment is sent"
    assert any(q.startswith("GET /acme/tiny-lora/resolve/") for q in hub.requests)


def test_hf_unknown_repo_fails(fake_hub: tuple[FakeHub, str], tmp_path: Path) -> None:
    _, endpoint = fake_hub
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "TUNEOPS_WORKDIR": str(tmp_path),
           "TUNEOPS_TERMINATION_LOG": str(tmp_path / "log"), "TUNEOPS_RETRIES": "0"}  # fmt: skip
    r = run_cli("inspect", "--adapter", "hf://acme/missing", env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "repository acme/missing not found" in json.loads((tmp_path / "log").read_text())["error"]
