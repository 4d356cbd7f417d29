"""The per-Pod adapter loader as a process: s3:// from moto's server with a Secret's variables of its own, a pinned
Hub revision from a local fake Hub, content-addressed folders, digests, the cache bound, unloads that free space,
and a restart that keeps only what still checks out."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workers.test_remote import FakeHub, moto_server, serving_hub
from tuneops.serving.process import free_port
from tuneops.storage.manifest import digest_of

pytestmark = pytest.mark.workers

BUCKET = "adapters"
ROLE = "ADAPTER_SECRET_A"
KEY = "loader-test-key"


@pytest.fixture(scope="module")
def s3(models: dict[str, Path]) -> Iterator[dict[str, str]]:
    import boto3

    with moto_server() as env:
        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        for p in sorted(models["llama-lora"].iterdir()):
            client.upload_file(str(p), BUCKET, f"team-a/lora/{p.name}")
        for p in sorted(models["llama-rich"].iterdir()):
            client.upload_file(str(p), BUCKET, f"team-a/rich/{p.name}")
        yield env


@pytest.fixture(scope="module")
def hub(models: dict[str, Path]) -> Iterator[tuple[FakeHub, str]]:
    files = {p.name: p.read_bytes() for p in models["llama-lora"].iterdir() if p.is_file()}
    with serving_hub("acme/tiny-lora", files) as served:
        yield served


class Loader:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], cache: Path) -> None:
        self.url, self.proc, self.cache = url, proc, cache

    def call(self, body: dict[str, Any], key: str | None = KEY) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            f"{self.url}/v1/sync", data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def sync(self, adapters: list[dict[str, str]], keep: list[str] | None = None) -> dict[str, Any]:
        status, body = self.call({"adapters": adapters, "keep": keep or []})
        assert status == 200, body
        return body

    def settle(self, adapters: list[dict[str, str]], timeout: float = 60) -> dict[str, Any]:
        """Syncs until no adapter is Fetching any more."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.sync(adapters)
            if all(a["state"] != "Fetching" for a in body["adapters"].values()):
                return body
            assert time.monotonic() < deadline, body
            time.sleep(0.2)


@contextlib.contextmanager
def run_loader(cache: Path, env: dict[str, str], max_bytes: int = 50 << 20) -> Iterator[Loader]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tuneops.workers.cli", "adapter-loader", "--cache", str(cache),
         "--max-bytes", str(max_bytes), "--port", str(port), "--host", "127.0.0.1"],
        env={**os.environ, **env},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, "the loader exited"
                assert time.monotonic() < deadline, "the loader did not start"
                time.sleep(0.2)
        yield Loader(url, proc, cache)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def loader_env(s3: dict[str, str], hub_url: str, tmp_path: Path) -> dict[str, str]:
    """The Secret's keys under the adapter's own role only: nothing ambient, no process-wide AWS keys."""
    prefix = f"TUNEOPS_{ROLE}_"
    return {
        f"{prefix}AWS_ACCESS_KEY_ID": "testing",
        f"{prefix}AWS_SECRET_ACCESS_KEY": "testing",
        f"{prefix}AWS_REGION": "us-east-1",
        f"{prefix}AWS_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
        "TUNEOPS_AMBIENT_CREDENTIALS": "0",
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "HF_ENDPOINT": hub_url,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_DISABLE_XET": "1",
        "TUNEOPS_BACKOFF_S": "0.1",
        "TUNEOPS_RETRIES": "2",
        "TUNEOPS_LOADER_API_KEY": KEY,
    }


def s3_want(name: str, path: str = "team-a/lora", digest: str = "") -> dict[str, str]:
    return {"name": name, "uri": f"s3://{BUCKET}/{path}", "digest": digest, "role": ROLE}


def test_s3_and_pinned_hub_adapters_land_in_one_content_addressed_folder(
    s3: dict[str, str], hub: tuple[FakeHub, str], models: dict[str, Path], tmp_path: Path
) -> None:
    fake, hub_url = hub
    cache = tmp_path / "cache"
    want = digest_of(models["llama-lora"])
    adapters = [
        s3_want("from-s3", digest=want),
        {"name": "from-hub", "uri": f"hf://acme/tiny-lora@{fake.sha}"},
        s3_want("rich", "team-a/rich"),
    ]
    with run_loader(cache, loader_env(s3, hub_url, tmp_path)) as loader:
        got = loader.settle(adapters)["adapters"]
        assert {n: a["state"] for n, a in got.items()} == {
            "from-s3": "Ready",
            "from-hub": "Ready",
            "rich": "Ready",
        }
        # The same bytes from two sources are one folder, named by their digest.
        assert got["from-s3"]["path"] == got["from-hub"]["path"] == str(cache / want.removeprefix("sha256:"))
        assert got["from-s3"]["digest"] == want
        assert got["rich"]["path"] != got["from-s3"]["path"]
        for name, src in (("from-s3", "llama-lora"), ("rich", "llama-rich")):
            folder = Path(got[name]["path"])
            for f in models[src].iterdir():
                assert (folder / f.name).read_bytes() == f.read_bytes()
        assert any("/revision/" + fake.sha in r for r in fake.requests), fake.requests
        assert sorted(p.name for p in cache.iterdir()) == sorted(
            {Path(a["path"]).name for a in got.values()}
        ), "nothing but the published folders (no staging left)"

        # Unloading frees the space: a folder nothing desires or keeps is deleted at the next sync.
        rich = Path(got["rich"]["path"])
        kept = loader.sync(adapters[:2], keep=[str(rich)])
        assert rich.is_dir() and set(kept["adapters"]) == {"from-s3", "from-hub"}, "kept while vLLM serves it"
        after = loader.sync(adapters[:2])
        assert not rich.exists()
        assert after["cacheBytes"] == sum(f.stat().st_size for f in Path(got["from-s3"]["path"]).iterdir())


def test_a_digest_mismatch_is_refused_and_nothing_is_published(
    s3: dict[str, str], hub: tuple[FakeHub, str], models: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    wrong = "sha256:" + "0" * 64
    with run_loader(cache, loader_env(s3, hub[1], tmp_path)) as loader:
        got = loader.settle([s3_want("bad", digest=wrong)])["adapters"]["bad"]
        assert got["state"] == "Failed" and got["reason"] == "DigestMismatch", got
        assert "0000000" in got["message"] and got["path"] == ""
        assert list(cache.iterdir()) == []
        # Not retried on its own: the same request stays refused until the digest or the URI changes.
        time.sleep(0.5)
        assert loader.sync([s3_want("bad", digest=wrong)])["adapters"]["bad"]["reason"] == "DigestMismatch"
        good = loader.settle([s3_want("bad", digest=digest_of(models["llama-lora"]))])["adapters"]["bad"]
        assert good["state"] == "Ready", good


def test_the_cache_bound_refuses_what_does_not_fit_beside_the_adapters_in_use(
    s3: dict[str, str], hub: tuple[FakeHub, str], models: dict[str, Path], tmp_path: Path
) -> None:
    size = sum(f.stat().st_size for f in models["llama-lora"].iterdir())
    rich = sum(f.stat().st_size for f in models["llama-rich"].iterdir())
    cache = tmp_path / "cache"
    env = {**loader_env(s3, hub[1], tmp_path), "TUNEOPS_LOADER_RETRY_S": "0.5"}
    with run_loader(cache, env, max_bytes=max(size, rich) + 1024) as loader:
        both = loader.settle([s3_want("a"), s3_want("b", "team-a/rich")])["adapters"]
        states = sorted((both["a"]["state"], both["b"]["state"]))
        assert states == ["Failed", "Ready"], both
        full = both["a"] if both["a"]["state"] == "Failed" else both["b"]
        assert full["reason"] == "CacheFull" and "lora.cacheSize" in full["message"]
        # Once the first is unloaded, the second fits: a CacheFull is tried again after the retry pause.
        deadline = time.monotonic() + 30
        while (alone := loader.sync([s3_want("b", "team-a/rich")])["adapters"]["b"])["state"] != "Ready":
            assert time.monotonic() < deadline, alone
            time.sleep(0.2)
        assert alone["path"] and Path(alone["path"]).is_dir()
        assert sum(f.stat().st_size for d in cache.iterdir() for f in d.iterdir()) <= max(size, rich) + 1024


def test_only_the_operator_calls_it_and_it_fetches_no_local_path(
    s3: dict[str, str], hub: tuple[FakeHub, str], tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "adapter_config.json").write_text("{}")
    with run_loader(tmp_path / "cache", loader_env(s3, hub[1], tmp_path)) as loader:
        status, _ = loader.call({"adapters": [s3_want("a")]}, key=None)
        assert status == 401
        status, _ = loader.call({"adapters": [s3_want("a")]}, key="wrong")
        assert status == 401
        status, _ = loader.call({"adapters": [{"name": "x", "uri": "s3://b/p", "extra": 1}]})
        assert status == 422
        for uri in (f"file://{secret}", "pvc://claim/secret", str(secret)):
            got = loader.settle([{"name": "local", "uri": uri}])["adapters"]["local"]
            assert got["state"] == "Failed" and got["reason"] == "InvalidURI", (uri, got)
        assert list((tmp_path / "cache").iterdir()) == []


def test_a_restarted_loader_keeps_only_folders_that_still_check_out(
    s3: dict[str, str], hub: tuple[FakeHub, str], models: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = loader_env(s3, hub[1], tmp_path)
    want = digest_of(models["llama-lora"])
    with run_loader(cache, env) as loader:
        lora = Path(loader.settle([s3_want("a", digest=want)])["adapters"]["a"]["path"])
        rich = Path(
            loader.settle([s3_want("a", digest=want), s3_want("r", "team-a/rich")])["adapters"]["r"]["path"]
        )
    # Changed while no loader ran: its name no longer says what it holds.
    victim = next(p for p in sorted(rich.iterdir()) if p.suffix == ".safetensors")
    victim.write_bytes(victim.read_bytes()[:-8] + b"\0" * 8)
    (cache / ".staging-leftover").mkdir()
    with run_loader(cache, {**env, "TUNEOPS_RETRIES": "0"}) as loader:
        assert not rich.exists() and not (cache / ".staging-leftover").exists()
        assert lora.is_dir()
        # The recorded digest names a folder already here: Ready at the first answer, with no download.
        shutil.rmtree(tmp_path / "hf", ignore_errors=True)
        first = loader.sync([s3_want("a", digest=want)])["adapters"]["a"]
        assert first["state"] == "Ready" and first["path"] == str(lora), first
