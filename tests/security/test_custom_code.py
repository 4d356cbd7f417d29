"""A model folder that carries its own Python code: GGUF conversion refuses it unless the operator allows it, the
converter cannot turn trust_remote_code on, and whatever runs in the converter runs without credentials."""

from __future__ import annotations

import ast
import json
import os
import sys
from pathlib import Path

import pytest

from tests.workers.conftest import run_cli
from tuneops import API_VERSION, toolpaths
from tuneops.api import parse_spec
from tuneops.api.conditions import Reason
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.reconcile.jobs import observe_job
from tuneops.render import Owner, ResolvedModel, render_quantize_job
from tuneops.workers import gguf
from tuneops.workers.customcode import clean_env, custom_code
from tuneops.workers.tiny import TinyModelSpec, make_model

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ROOT / "operator" / "tuneops" / "workers"

# What a worker Pod's environment holds: credentials of each source, the Pod's own cloud identity, other keys.
SECRETS = {
    "HF_TOKEN": "hf_leaked_token",
    "HUGGING_FACE_HUB_TOKEN": "hf_leaked_token_2",
    "AWS_ACCESS_KEY_ID": "AKIALEAKED",
    "AWS_SECRET_ACCESS_KEY": "leaked-aws-secret",
    "AWS_SESSION_TOKEN": "leaked-session",
    "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/secrets/eks/token",
    "TUNEOPS_SOURCE_HF_TOKEN": "hf_leaked_source_token",
    "TUNEOPS_OUTPUT_AWS_SECRET_ACCESS_KEY": "leaked-output-secret",
    "TUNEOPS_OUTPUT_AWS_ENDPOINT_URL": "http://minio.internal:9000",
    "VLLM_API_KEY": "leaked-api-key",
    "DB_PASSWORD": "leaked-password",
    "GOOGLE_APPLICATION_CREDENTIALS": "/var/run/gcp/key.json",
}

# Stands in for llama.cpp's converter on the architectures it loads with trust_remote_code=True (Qwen v1,
# ChatGLM, ...): the tokenizer first, then the output file.
FAKE_CONVERTER = """
import sys
from pathlib import Path
from transformers import AutoTokenizer
src, outfile = sys.argv[1], sys.argv[sys.argv.index("--outfile") + 1]
AutoTokenizer.from_pretrained(src, trust_remote_code=True)
Path(outfile).write_bytes(b"GGUF")
"""


def hostile_model(root: Path, marker: Path) -> Path:
    """A tiny Llama whose tokenizer_config.json maps AutoTokenizer to tokenization_evil.py, which records the
    environment it runs in as soon as it is imported."""
    model = make_model(root / "model", TinyModelSpec(num_layers=1))
    (model / "tokenization_evil.py").write_text(
        "import json, os\n"
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text(json.dumps(dict(os.environ)))\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n"
        "    pass\n"
    )
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["auto_map"] = {
        "AutoTokenizer": ["tokenization_evil.EvilTokenizer", "tokenization_evil.EvilTokenizer"]
    }
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    return model


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("evil")
    marker = root / "ran.json"
    return hostile_model(root, marker), marker


@pytest.fixture
def marker(evil: tuple[Path, Path]) -> Path:
    evil[1].unlink(missing_ok=True)
    return evil[1]


def assert_no_credentials(env: dict[str, str]) -> None:
    leaked = sorted(k for k in SECRETS if k in env)
    assert not leaked, f"the model's code saw {leaked}"
    values = set(SECRETS.values())
    assert not [k for k, v in env.items() if v in values], "a credential's value reached the model's code"


# ------------------------------------------------------------------------------------------------ refusal


@pytest.mark.parametrize(
    ("files", "found"),
    [
        ({"config.json": {"model_type": "llama"}}, []),
        ({"config.json": {"auto_map": {"AutoModel": "m.M"}}}, ["config.json has an auto_map"]),
        ({"tokenizer_config.json": {"auto_map": {}}}, ["tokenizer_config.json has an auto_map"]),
        ({"config.json": {}, "sub/helper.py": "x = 1"}, ["Python files: sub/helper.py"]),
        (
            {"preprocessor_config.json": {"auto_map": {}}, "modeling_x.py": ""},
            ["preprocessor_config.json has an auto_map", "Python files: modeling_x.py"],
        ),
    ],
)
def test_custom_code_is_found(files: dict[str, object], found: list[str], tmp_path: Path) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    assert custom_code(tmp_path) == found


@pytest.mark.workers
def test_gguf_worker_refuses_a_model_with_its_own_code(
    evil: tuple[Path, Path], marker: Path, tmp_path: Path
) -> None:
    log = tmp_path / "log"
    r = run_cli(
        "quantize-gguf", "--source", str(evil[0]), "--output", str(tmp_path / "out"), "--type", "Q8_0",
        env={**SECRETS, "TUNEOPS_TERMINATION_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    error = json.loads(log.read_text())["error"]
    assert "carries its own Python code" in error
    assert "tokenizer_config.json has an auto_map" in error and "tokenization_evil.py" in error
    assert "allowCustomCode" in error
    assert not marker.exists(), "the model's code ran"
    assert not (tmp_path / "out").exists()
    # What the operator makes of that Pod: the worker's own words in the QuantizationJob's condition.
    job = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}}
    term = {"exitCode": 2, "reason": "Error", "message": log.read_text()}
    pod = {"status": {"containerStatuses": [{"state": {"terminated": term}}]}}
    outcome = observe_job(job, [pod])
    assert (outcome.state, outcome.reason) == ("Failed", Reason.JOB_FAILED)
    assert "carries its own Python code" in outcome.message and "allowCustomCode" in outcome.message


@pytest.mark.workers
def test_allowed_custom_code_converts_with_the_real_converter(
    evil: tuple[Path, Path], marker: Path, tmp_path: Path
) -> None:
    """A Llama's converter never needs the model's code; allowed, the source converts, and if anything of it ran,
    it ran without credentials."""
    log = tmp_path / "log"
    r = run_cli(
        "quantize-gguf", "--source", str(evil[0]), "--output", str(tmp_path / "out"), "--type", "Q8_0",
        "--allow-custom-code", env={**SECRETS, "TUNEOPS_TERMINATION_LOG": str(log)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(log.read_text())["artifact"]["files"] == ["model-Q8_0.gguf"]
    if marker.exists():
        assert_no_credentials(json.loads(marker.read_text()))


# -------------------------------------------------------------------------- the converter's own loading


@pytest.fixture
def fake_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "convert_hf_to_gguf.py"
    script.write_text(FAKE_CONVERTER)
    monkeypatch.setattr(toolpaths, "llamacpp_converter", lambda: script)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return script


@pytest.mark.workers
def test_allowed_custom_code_runs_without_credentials(
    evil: tuple[Path, Path], marker: Path, fake_converter: Path, tmp_path: Path
) -> None:
    """The operator allowed custom code and the converter asks for it: it runs, but sees no credential and no
    Hub access (the worker downloaded the model beforehand)."""
    out = gguf.run_gguf(
        str(evil[0]), str(tmp_path / "out"), types=["F16"], outtype="f16", allow_custom_code=True
    )
    assert out.artifact is not None and out.artifact.files == ["model-F16.gguf"]
    assert marker.exists(), "the converter did not run the model's code: the test proves nothing"
    seen = json.loads(marker.read_text())
    assert_no_credentials(seen)
    assert seen["HF_HUB_OFFLINE"] == "1"
    assert os.environ["HF_TOKEN"] == SECRETS["HF_TOKEN"]  # the worker itself keeps them for its own transfers


@pytest.mark.workers
def test_the_converter_cannot_turn_trust_remote_code_on(
    evil: tuple[Path, Path], marker: Path, fake_converter: Path, tmp_path: Path
) -> None:
    """Even a source that got past the refusal: the converter's trust_remote_code=True is resolved as False,
    so transformers takes its own tokenizer class and never imports the model's."""
    gguf.convert(evil[0], tmp_path / "model.gguf", "f16")
    assert (tmp_path / "model.gguf").read_bytes() == b"GGUF"
    assert not marker.exists(), "the model's code ran inside the converter"


def test_converter_environment_keeps_no_credentials() -> None:
    env = clean_env({**SECRETS, "PATH": "/usr/bin", "HOME": "/scratch", "HF_HOME": "/scratch/hf",
                     "OMP_NUM_THREADS": "2", "PYTHONPATH": "/src", "TUNEOPS_CACHE": "/opt/c",
                     "PYTHON_KEYRING_PASSWORD": "x", "KUBERNETES_SERVICE_HOST": "10.0.0.1"})  # fmt: skip
    assert env == {
        "PATH": "/usr/bin", "HOME": "/scratch", "HF_HOME": "/scratch/hf", "OMP_NUM_THREADS": "2",
        "PYTHONPATH": "/src", "TUNEOPS_CACHE": "/opt/c",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
    }  # fmt: skip


# ---------------------------------------------------------------------- trust_remote_code in the workers


def _from_pretrained_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted(WORKERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr == "from_pretrained":
                assert isinstance(node, ast.Call)
                calls.append((f"{path.name}:{node.lineno} {ast.unparse(func.value)}", node))
    return calls


def test_every_worker_from_pretrained_refuses_remote_code() -> None:
    """peft's PeftModel.from_pretrained reads an adapter_config.json, which has no auto_map: it loads no code."""
    calls = [(where, c) for where, c in _from_pretrained_calls() if not where.endswith(" PeftModel")]
    files = {where.split(":")[0] for where, _ in calls}
    assert {"merge.py", "awq.py", "evaluate.py"} <= files, files
    wrong = [
        where
        for where, call in calls
        if not any(
            k.arg == "trust_remote_code" and isinstance(k.value, ast.Constant) and k.value.value is False
            for k in call.keywords
        )
    ]
    assert not wrong, f"from_pretrained without trust_remote_code=False: {wrong}"


# -------------------------------------------------------------------------------------- operator config


def _gguf_job_args(config: OperatorConfig) -> list[str]:
    doc = {
        "kind": "QuantizationJob",
        "metadata": {"name": "q"},
        "spec": {"source": {"uri": "pvc://models/m"}, "method": "gguf", "output": {"uri": "pvc://models/q"}},
    }
    spec = parse_spec("QuantizationJob", doc)
    assert isinstance(spec, QuantizationJobSpec)
    owner = Owner(API_VERSION, "QuantizationJob", "q", "team-a", "uid-1")
    job = render_quantize_job(spec, owner, config, source=ResolvedModel(uri="pvc://models/m", format="hf"))
    args: list[str] = job["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


def test_custom_code_is_off_by_default_and_the_config_passes_it_to_the_worker() -> None:
    assert OperatorConfig().allow_custom_code is False
    assert "--allow-custom-code" not in _gguf_job_args(OperatorConfig())
    assert "--allow-custom-code" in _gguf_job_args(OperatorConfig.model_validate({"allowCustomCode": True}))


def test_the_worker_runs_the_converter_under_the_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr(gguf, "_run", lambda cmd, what, cwd: seen.append(cmd))
    gguf.convert(tmp_path, tmp_path / "o.gguf", "f16")
    gguf.convert(tmp_path, tmp_path / "o.gguf", "f16", allow_custom_code=True)
    assert seen[0][:3] == [sys.executable, "-m", "tuneops.workers.customcode"]
    assert seen[1][0] == sys.executable and seen[1][1] == str(toolpaths.llamacpp_converter())
