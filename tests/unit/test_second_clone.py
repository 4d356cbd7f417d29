"""Point 0 of issue 24: a clone whose tool cache another clone filled. `make demo` (tuneops demo), the e2e suite
and `make test` go through `ensure_tools`, which must link this clone's fresh venv to the cached llama.cpp
Python bindings even though nothing needs building; without the link the GGUF quality gate fails with
`ModuleNotFoundError: No module named 'llama_cpp'`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuneops import toolpaths
from tuneops.local.cli import REPO, ensure_tools, llamacpp_linked


def _warm_cache(cache: Path) -> Path:
    """A llama.cpp cache as scripts/build-llamacpp.sh leaves it (tools and bindings stand-ins)."""
    dest = cache / f"llama.cpp-{toolpaths.LLAMACPP_VERSION}"
    (dest / "bin").mkdir(parents=True)
    for tool in ("llama-quantize", "llama-server", "llama-perplexity"):
        (dest / "bin" / tool).write_text("#!/bin/sh\n")
        (dest / "bin" / tool).chmod(0o755)
    (dest / "python" / "llama_cpp").mkdir(parents=True)
    (dest / "python" / "llama_cpp" / "__init__.py").write_text("FROM_CACHE = True\n")
    (dest / "VERSION").write_text(toolpaths.LLAMACPP_VERSION + "\n")
    return dest


def _fresh_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path


def test_a_fresh_venv_is_linked_to_a_cache_another_clone_filled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _warm_cache(cache)
    monkeypatch.setenv("TUNEOPS_CACHE", str(cache))
    venv = _fresh_venv(tmp_path / "clone2" / ".venv")
    assert not llamacpp_linked(venv)
    said: list[str] = []
    ensure_tools(["llamacpp"], said.append, venv=venv)
    assert llamacpp_linked(venv)
    assert any("linking" in line for line in said), said
    assert not any("not built yet" in line for line in said), "nothing was rebuilt"
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import llama_cpp; print(llama_cpp.FROM_CACHE)"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert probe.stdout.strip() == "True", probe.stderr
    # Linked: a second call runs nothing.
    said.clear()
    ensure_tools(["llamacpp"], said.append, venv=venv)
    assert said == []


def test_every_make_target_that_needs_llamacpp_links_the_venv() -> None:
    """`make demo` reaches ensure_tools (tuneops demo); the test targets run the script with $(VENV)."""
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/tuneops demo", makefile, re.M)
    for target in ("test-workers", "test-serving", "test-e2e", "bench"):
        line = re.search(rf"^{target}:(.*)$", makefile, re.M)
        assert line and "llamacpp" in line.group(1), target
    assert re.search(r"^llamacpp:.*\n\tscripts/build-llamacpp.sh \$\(VENV\)", makefile, re.M)
    assert "scripts/build-llamacpp.sh $(VENV)" in makefile.split("deps:")[1].split("\n\n")[0]
    demo = (REPO / "operator" / "tuneops" / "local" / "demo.py").read_text()
    assert 'ensure_tools(["kube", "llamacpp", "vllm"]' in demo


def test_local_status_shows_the_local_url_next_to_the_in_cluster_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tuneops.local import cli

    monkeypatch.setattr(
        cli.LocalCluster,
        "status",
        lambda self: {
            "root": str(tmp_path),
            "kubeconfig": str(tmp_path / "kubeconfig"),
            "controlplane": {"ready": True, "server": "https://127.0.0.1:6443"},
            "node": {"pid": 1, "running": True},
            "operator": {"pid": 2, "running": True},
            "endpoints": {"default/tiny-llama/8000": "http://127.0.0.1:37261"},
        },
    )
    assert cli.main(["--root", str(tmp_path), "status"]) == 0
    out = capsys.readouterr().out
    assert (
        "default/tiny-llama/8000: http://127.0.0.1:37261/v1 (from this machine); "
        "http://tiny-llama.default.svc.cluster.local:8000/v1 (in the cluster)"
    ) in out
