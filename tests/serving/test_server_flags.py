"""The extraArgs allow-lists (tuneops.validation.args) describe what the real servers read.

Each flag a spec may set exists in the installed server with the number of values the table says, each flag the
operator claims is one the server has, and the spellings the checker normalises are the ones the parsers accept:
vLLM's parser (built in its own environment) and llama-server's own --help.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tuneops.toolpaths import llamacpp_bin, vllm_python
from tuneops.validation.args import LLAMACPP, VLLM, check_args

# Prints {option: [nargs, action class]} of the parser `python -m vllm.entrypoints.openai.api_server` builds, then
# parses the argv given on stdin (JSON) with it and prints the values of a few destinations.
VLLM_PROBE = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
options = {o: [a.nargs, type(a).__name__] for a in parser._actions for o in a.option_strings}
argv = json.loads(sys.stdin.read())
parsed = vars(parser.parse_args(argv)) if argv else {}
print(json.dumps({"options": options, "abbrev": parser.allow_abbrev,
                  "parsed": {k: parsed.get(k) for k in ("trust_remote_code", "max_num_seqs", "seed",
                                                        "override_generation_config", "enforce_eager")}},
                 default=str))
"""


def _vllm(argv: list[str]) -> dict[str, object]:
    out = subprocess.run(
        [str(vllm_python()), "-c", VLLM_PROBE],
        input=json.dumps(argv),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def vllm_parser(vllm_installed: Path) -> dict[str, object]:
    return _vllm([])


def test_every_safe_vllm_flag_exists_with_the_arity_the_table_says(vllm_parser: dict[str, object]) -> None:
    options = vllm_parser["options"]
    assert isinstance(options, dict)
    wrong = {}
    for flag, arity in VLLM.safe.items():
        if flag not in options:
            wrong[flag] = "missing from vLLM"
            continue
        nargs = options[flag][0]
        expected = {0: (0,), 1: (None,), "+": ("+",)}[arity]
        if nargs not in expected:
            wrong[flag] = f"nargs {nargs!r}, table says {arity!r}"
    assert wrong == {}
    assert sorted(f for f in VLLM.operator if f not in options) == []


def test_vllm_reads_abbreviations_and_the_checker_refuses_them(vllm_parser: dict[str, object]) -> None:
    # argparse's allow_abbrev is on in vLLM: `--trust-remote` would set trust_remote_code.
    assert vllm_parser["abbrev"] is True
    assert check_args(["--trust-remote"], "vllm")
    assert check_args(["--max-num-se", "8"], "vllm")


def test_the_spellings_the_checker_accepts_mean_what_it_thinks() -> None:
    argv = [
        "--max_num_seqs=8",
        "--seed",
        "-1",
        "--override-generation-config.temperature",
        "0.25",
        "--enforce-eager",
    ]
    assert check_args(argv, "vllm") == []
    parsed = _vllm(argv)["parsed"]
    assert isinstance(parsed, dict)
    assert parsed["max_num_seqs"] == 8 and parsed["seed"] == -1 and parsed["enforce_eager"] is True
    assert "0.25" in str(parsed["override_generation_config"])
    assert parsed["trust_remote_code"] is False


def test_a_file_of_flags_would_turn_denied_flags_back_on(tmp_path: Path) -> None:
    """Why --config is refused: vLLM pulls every key of the file in as a flag."""
    flags = tmp_path / "flags.yaml"
    flags.write_text("trust-remote-code: true\n")
    parsed = _vllm(["--config", str(flags)])["parsed"]
    assert isinstance(parsed, dict) and parsed["trust_remote_code"] is True
    assert check_args(["--config", str(flags)], "vllm")


def _llama_help() -> dict[str, bool]:
    """llama-server's options from its --help: {spelling: takes a value}. An option line starts at the first
    column with its spellings separated by ", ", then the value's placeholder if it takes one (`N`, `TYPE`,
    `[on|off|auto]`), then two or more spaces and the description."""
    text = subprocess.run(
        [str(llamacpp_bin("llama-server")), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    out: dict[str, bool] = {}
    for line in text.splitlines():
        if not line.startswith("-") or line.startswith("-----"):
            continue
        m = re.match(r"^((?:-[\w-]+,\s+)*-[\w-]+)(?: (\S+))?", line)
        if m is None:
            continue
        names = [n.strip() for n in m.group(1).split(",")]
        takes = m.group(2) is not None
        for n in names:
            out[n] = takes
    return out


def test_every_safe_llamacpp_flag_exists_with_the_arity_the_table_says() -> None:
    options = _llama_help()
    assert len(options) > 50, "llama-server --help printed no options"
    wrong = {}
    for flag, arity in LLAMACPP.safe.items():
        if flag not in options:
            wrong[flag] = "missing from llama-server"
        elif options[flag] != (arity != 0):
            wrong[flag] = f"takes a value: {options[flag]}, table says {arity!r}"
    assert wrong == {}
    assert sorted(f for f in LLAMACPP.operator if f not in options) == []


def test_llama_server_reads_every_flag_from_llama_arg_variables() -> None:
    """Why LLAMA_ARG_* names are kept out of spec.env: --help lists an environment variable for most flags."""
    text = subprocess.run(
        [str(llamacpp_bin("llama-server")), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "LLAMA_ARG_MODEL" in text and "LLAMA_ARG_HOST" in text


def test_llama_server_reads_underscores_but_not_equals_forms() -> None:
    """The spellings the checker assumes for llama-server: `--batch_size 64` is `--batch-size 64`, and
    `--batch-size=64` stops the server (so it is refused before any Pod would crash-loop on it)."""
    server = str(llamacpp_bin("llama-server"))
    ok = subprocess.run(
        [server, "--batch_size", "64", "--version"], capture_output=True, text=True, timeout=60
    )
    assert "invalid argument" not in ok.stdout + ok.stderr
    bad = subprocess.run([server, "--batch-size=64", "--version"], capture_output=True, text=True, timeout=60)
    assert "invalid argument: --batch-size=64" in bad.stdout + bad.stderr
    assert check_args(["--batch_size", "64"], "llamacpp") == []
    assert check_args(["--batch-size=64"], "llamacpp")
