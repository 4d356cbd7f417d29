"""`inspect --publish`: an adapter served unmerged gets a content-addressed copy, one path per version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.workers.conftest import run_cli
from tuneops import storage


def _inspect(adapter: Path, base: Path, publish: Path, log: Path) -> dict[str, object]:
    r = run_cli("inspect", "--adapter", str(adapter), "--base", str(base), "--publish", str(publish),
                env={"TUNEOPS_TERMINATION_LOG": str(log)})  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    art: dict[str, object] = json.loads(log.read_text())["artifact"]
    return art


def test_each_adapter_version_is_published_under_its_own_digest(
    models: dict[str, Path], tmp_path: Path
) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(models["llama-lora"], adapter)
    publish, log = tmp_path / "published", tmp_path / "log"

    first = _inspect(adapter, models["llama"], publish, log)
    digest = str(first["digest"])
    path = Path(str(first["uri"]))
    assert path == publish / digest.removeprefix("sha256:")[:16]
    assert (path / "adapter_config.json").read_bytes() == (adapter / "adapter_config.json").read_bytes()
    manifest = storage.read_manifest(path)
    assert manifest is not None and manifest.digest == digest and storage.verify(path, manifest) == []
    assert _inspect(adapter, models["llama"], publish, log)["uri"] == str(path)  # same version: same path

    # New weights under the same adapter URI: a new digest, a new path; the old version stays intact.
    shutil.copy2(models["llama-rich"] / "adapter_model.safetensors", adapter / "adapter_model.safetensors")
    shutil.copy2(models["llama-rich"] / "adapter_config.json", adapter / "adapter_config.json")
    second = _inspect(adapter, models["llama"], publish, log)
    assert second["digest"] != digest and second["uri"] != str(path)
    assert storage.verify(path, manifest) == []


def test_an_incompatible_adapter_is_not_published(models: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log"
    art = _inspect(models["wide-lora"], models["llama"], tmp_path / "published", log)
    assert json.loads(log.read_text())["problems"]
    assert art["uri"] == str(models["wide-lora"])
    assert not (tmp_path / "published").exists()
