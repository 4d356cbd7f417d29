"""The images install what the tests run: same torch, same llama.cpp, same Python pins."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest

from tuneops import toolpaths

pytestmark = pytest.mark.workers

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "images" / "worker" / "Dockerfile"
GGUF = ROOT / "images" / "gguf" / "Dockerfile"


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        assert m, f"{path.name}: unpinned requirement {line!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def torch_pin_of_setup() -> str:
    m = re.search(r'"torch==([^"]+)"', (ROOT / "scripts" / "setup-venv.sh").read_text())
    assert m
    return m.group(1)


def arg(dockerfile: Path, name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", dockerfile.read_text(), re.M)
    assert m, f"{dockerfile} has no ARG {name}"
    return m.group(1)


def test_worker_requirements_are_pinned_and_installed() -> None:
    want = pins(ROOT / "requirements" / "worker.txt")
    assert {"transformers", "peft", "safetensors", "llmcompressor", "compressed-tensors", "boto3"} <= set(
        want
    )
    for name, version in want.items():
        assert metadata.version(name) == version, (
            f"{name}: venv has {metadata.version(name)}, pin is {version}"
        )


@pytest.mark.parametrize("dockerfile", [WORKER, GGUF])
def test_images_use_the_same_torch_and_requirements(dockerfile: Path) -> None:
    assert arg(dockerfile, "TORCH_VERSION") == torch_pin_of_setup()
    assert metadata.version("torch").split("+")[0] == torch_pin_of_setup()
    text = dockerfile.read_text()
    assert "COPY requirements/worker.txt" in text
    # no package is pinned inline to another version than requirements/worker.txt
    want = pins(ROOT / "requirements" / "worker.txt")
    for name, version in re.findall(r"pip install[^\n]*?\"?([A-Za-z0-9_\-]+)==([0-9][^\s\"]*)", text):
        if name.lower() == "torch":
            continue
        assert want.get(name.lower()) == version, f"{dockerfile.name} pins {name}=={version}"


def test_gguf_image_builds_the_tested_llamacpp() -> None:
    text = GGUF.read_text()
    assert "scripts/build-llamacpp.sh" in text
    for ver in re.findall(r"llama\.cpp-([0-9.]+)", text):
        assert ver == toolpaths.LLAMACPP_VERSION
    script = (ROOT / "scripts" / "build-llamacpp.sh").read_text()
    assert "-DGGML_NATIVE=OFF" in script and "-DLLAMA_USE_PREBUILT_UI=OFF" in script
    # the packages the GGUF image takes from the pins exist there
    names = re.search(r"grep -E '\^\(([^)]*)\)==", text)
    assert names is not None
    assert set(names.group(1).split("|")) <= set(pins(ROOT / "requirements" / "worker.txt"))
