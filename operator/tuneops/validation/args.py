"""Server flags a spec may add (vllm.extraArgs, llamacpp.extraArgs), read the way each server's parser reads them.

A deny-list of flags that load code misses whatever the server grows next (a new plugin flag, a file of flags),
so extraArgs are checked against an allow-list instead: the flags each server documents as tuning knobs that
read no file, load no code and leave alone what the operator sets. Everything else is refused unless the
operator config lifts it (allow.extraArgs). The spellings each parser accepts are normalised first:

- vLLM (argparse, `FlexibleArgumentParser`): `--flag value`, `--flag=value`, underscores for dashes, the dotted
  form of its JSON flags (`--override-generation-config.temperature 0.2` sets a key of
  `--override-generation-config`), `--config FILE` (more flags from a YAML file: never allowed, since the file's
  flags are not the spec's), and prefix abbreviations (refused: a flag must be written in full).
- llama-server (common/arg.cpp): `--flag value` and short forms (`-c 4096`), underscores for dashes in long
  flags, no `--flag=value` (it would stop the server at start). It also reads every flag from an environment
  variable `LLAMA_ARG_*`, which the env allow-list keeps out (validation/policy.py).

Every token must be a flag or the value of the flag before it: a stray value could become a positional argument
(the model) of either server. tests/serving checks these tables against the real parsers.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Arity = Literal[0, 1, "+"]
Runtime = Literal["vllm", "llamacpp"]

_NUMBER = re.compile(r"^-\d+(\.\d+)?([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Grammar:
    """How one server reads its command line, and which flags a spec may set there."""

    server: str
    equals: bool  # reads --flag=value
    dotted: bool  # reads --flag.key value as a key of a JSON-valued flag
    safe: dict[str, Arity]  # flag (every spelling) -> how many values follow it
    operator: dict[str, str]  # flags the operator sets -> the spec field that sets them (or why it owns them)
    json_flags: frozenset[str] = (
        frozenset()
    )  # safe flags whose value is JSON (the only ones with a dotted form)


def _flags(arity: Arity, *names: str) -> dict[str, Arity]:
    return dict.fromkeys(names, arity)


VLLM = Grammar(
    server="vLLM",
    equals=True,
    dotted=True,
    safe={
        **_flags(
            1,
            "--max-num-seqs",
            "--max-num-batched-tokens",
            "--long-prefill-token-threshold",
            "--kv-cache-dtype",
            "--block-size",
            "--cpu-offload-gb",
            "--kv-cache-memory-bytes",
            "--seed",
            "--max-logprobs",
            "--quantization",
            "-q",
            "--tokenizer-mode",
            "--tool-call-parser",
            "--reasoning-parser",
            "--scheduling-policy",
            "--uvicorn-log-level",
            "--response-role",
            "--num-gpu-blocks-override",
            "--max-parallel-loading-workers",
            "--override-generation-config",
            "--limit-mm-per-prompt",
            "--generation-config",
        ),
        **_flags(
            0,
            "--enforce-eager",
            "--no-enforce-eager",
            "--enable-chunked-prefill",
            "--no-enable-chunked-prefill",
            "--disable-log-stats",
            "--enable-log-requests",
            "--enable-auto-tool-choice",
            "--disable-fastapi-docs",
            "--enable-prompt-tokens-details",
            "--return-tokens-as-token-ids",
            "--disable-custom-all-reduce",
            "--async-scheduling",
        ),
    },
    json_flags=frozenset({"--override-generation-config", "--limit-mm-per-prompt"}),
    operator={
        "--model": "spec.model",
        "--served-model-name": "spec.vllm.servedModelName",
        "--host": "the operator binds the server to the Pod's port",
        "--port": "spec.service.port",
        "--uds": "the operator binds the server to the Pod's port",
        "--tensor-parallel-size": "spec.vllm.tensorParallelSize",
        "-tp": "spec.vllm.tensorParallelSize",
        "--pipeline-parallel-size": "spec.vllm.pipelineParallelSize",
        "-pp": "spec.vllm.pipelineParallelSize",
        "--data-parallel-size": "spec.replicas (one replica per Pod or group)",
        "-dp": "spec.replicas (one replica per Pod or group)",
        "--max-model-len": "spec.vllm.maxModelLen",
        "--dtype": "spec.vllm.dtype",
        "--gpu-memory-utilization": "spec.vllm.gpuMemoryUtilization",
        "--enable-prefix-caching": "spec.vllm.enablePrefixCaching",
        "--no-enable-prefix-caching": "spec.vllm.enablePrefixCaching",
        "--distributed-executor-backend": "spec.vllm.nodes",
        "--enable-lora": "spec.lora",
        "--max-loras": "spec.lora.maxLoras",
        "--max-lora-rank": "spec.lora.maxLoraRank",
        "--max-cpu-loras": "spec.lora.maxCpuLoras",
        "--lora-modules": "spec.lora.adapters",
        "--shutdown-timeout": "spec.vllm.shutdownTimeoutSeconds",
        "--api-key": "spec.apiKeySecretRef",
    },
)
# --generation-config reads a folder when given a path: only its two named values are allowed.
_GENERATION_CONFIG_VALUES = frozenset({"auto", "vllm"})

LLAMACPP = Grammar(
    server="llama-server",
    equals=False,
    dotted=False,
    safe={
        **_flags(
            1,
            "--threads-batch",
            "-tb",
            "--threads-http",
            "--batch-size",
            "-b",
            "--ubatch-size",
            "-ub",
            "--n-predict",
            "--predict",
            "-n",
            "--keep",
            "--cache-type-k",
            "-ctk",
            "--cache-type-v",
            "-ctv",
            "--defrag-thold",
            "-dt",
            "--rope-scaling",
            "--rope-scale",
            "--rope-freq-base",
            "--rope-freq-scale",
            "--temp",
            "--top-k",
            "--top-p",
            "--min-p",
            "--repeat-penalty",
            "--repeat-last-n",
            "--seed",
            "-s",
            "--timeout",
            "-to",
            "--cache-reuse",
            "--reasoning-format",
            "--reasoning-budget",
            "--split-mode",
            "-sm",
            "--tensor-split",
            "-ts",
            "--main-gpu",
            "-mg",
            "--flash-attn",
            "-fa",
        ),
        **_flags(
            0,
            "--cont-batching",
            "-cb",
            "--no-cont-batching",
            "-nocb",
            "--slots",
            "--no-slots",
            "--jinja",
            "--no-webui",
            "--no-warmup",
            "--no-kv-offload",
            "-nkvo",
            "--verbose",
            "-v",
            "--log-disable",
        ),
    },
    operator={
        "--model": "spec.model",
        "-m": "spec.model",
        "--host": "the operator binds the server to the Pod's port",
        "--port": "spec.service.port",
        "--ctx-size": "spec.llamacpp.ctxSize",
        "-c": "spec.llamacpp.ctxSize",
        "--parallel": "spec.llamacpp.parallel",
        "-np": "spec.llamacpp.parallel",
        "--threads": "spec.resources (one thread per CPU requested)",
        "-t": "spec.resources (one thread per CPU requested)",
        "--n-gpu-layers": "spec.llamacpp.gpuLayers",
        "--gpu-layers": "spec.llamacpp.gpuLayers",
        "-ngl": "spec.llamacpp.gpuLayers",
        "--alias": "the served model name: the resource's name",
        "-a": "the served model name: the resource's name",
        "--api-key": "spec.apiKeySecretRef",
        "--api-key-file": "spec.apiKeySecretRef",
    },
)

GRAMMARS: dict[Runtime, Grammar] = {"vllm": VLLM, "llamacpp": LLAMACPP}


@dataclass(frozen=True)
class ArgProblem:
    """A refused item of extraArgs: its index and why."""

    index: int
    message: str


def _is_flag(token: str, g: Grammar) -> bool:
    """Whether the server reads `token` as a flag. vLLM reads any `-x.y` as a dotted flag, numbers included."""
    if not token.startswith("-") or token == "-":
        return False
    return not _NUMBER.match(token) or (g.dotted and "." in token)


def _canonical(name: str) -> str:
    """The flag as both parsers look it up: long flags with dashes for underscores."""
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def check_args(
    args: Sequence[str], runtime: Runtime, *, allowed: Sequence[str] = (), denied: Sequence[str] = ()
) -> list[ArgProblem]:
    """Why each refused item of `args` is refused. `allowed` (allow.extraArgs) are globs of further flags the
    administrator lets through, values and all; `denied` (allow.deniedArgs) are refused even if safe-listed.
    Flags the operator sets are refused whatever the configuration says: a spec has fields for them."""
    g = GRAMMARS[runtime]
    out: list[ArgProblem] = []
    i = 0
    while i < len(args):
        token = args[i]
        at = i
        i += 1
        if not _is_flag(token, g):
            out.append(ArgProblem(at, _stray(g, token)))
            continue
        name, inline = token, None
        if token.startswith("--") and "=" in token:
            name, inline = token.split("=", 1)
        if inline is not None and not g.equals:
            out.append(ArgProblem(at, _no_equals(g, name)))
            continue
        flag = _canonical(name)
        base = flag.split(".", 1)[0] if g.dotted and flag.startswith("--") and "." in flag else flag
        refused: str | None = None
        if base in g.operator:
            refused = f"{flag} is set by the operator ({g.operator[base]}); it cannot come from extraArgs"
        elif not any(fnmatch.fnmatchcase(base, p) or fnmatch.fnmatchcase(flag, p) for p in allowed):
            refused = _refusal(g, flag, base, denied)
            if refused is None:
                i = _values(g, args, at, i, flag, 1 if base != flag else g.safe[base], inline, out)
                continue
        if refused:
            out.append(ArgProblem(at, refused))
        # A flag of unknown arity (lifted by the administrator, or refused) takes the values after it.
        while i < len(args) and not _is_flag(args[i], g):
            i += 1
    return out


def _stray(g: Grammar, token: str) -> str:
    return (
        f"{token!r} is not a flag, nor the value of the flag before it: {g.server} would read it as an argument "
        "of its own (e.g. the model); give values right after their flag"
    )


def _no_equals(g: Grammar, name: str) -> str:
    return f"{g.server} does not read {name}=VALUE and would stop at start; write the flag and its value as two items"


def _values(
    g: Grammar,
    args: Sequence[str],
    at: int,
    i: int,
    flag: str,
    arity: Arity,
    inline: str | None,
    out: list[ArgProblem],
) -> int:
    """Check the values of the safe flag `flag` at `at` (the next item is `i`); returns the index after them."""
    values: list[str] = [inline] if inline is not None else []
    if inline is not None and arity == 0:
        out.append(ArgProblem(at, f"{flag} takes no value"))
        return i
    if inline is None and arity != 0:
        while i < len(args) and not _is_flag(args[i], g):
            values.append(args[i])
            i += 1
            if arity == 1:
                break
        if not values:
            out.append(ArgProblem(at, f"{flag} needs a value right after it"))
            return i
    if flag == "--generation-config" and values[0] not in _GENERATION_CONFIG_VALUES:
        out.append(
            ArgProblem(at, "--generation-config reads a folder when given a path; only 'auto' or 'vllm'")
        )
    return i


def _refusal(g: Grammar, flag: str, base: str, denied: Sequence[str]) -> str | None:
    lift = "allow.extraArgs in the operator config lifts it (docs/security.md)"
    if any(fnmatch.fnmatchcase(base, p) for p in denied):
        return f"{flag} is refused by the operator config (allow.deniedArgs); {lift}"
    if base == "--config" and g.dotted:
        return (
            f"--config makes {g.server} read more flags from a file, which would bypass this check; "
            "put the flags in extraArgs"
        )
    if base != flag and base not in g.json_flags:
        return f"{flag}: {base} has no dotted form here (only {', '.join(sorted(g.json_flags))} do)"
    if base in g.safe:
        return None
    full = sorted(f for f in g.safe if f.startswith(flag) and flag.startswith("--") and len(flag) > 2)
    hint = f" (write flags in full: {', '.join(full[:3])}?)" if full else ""
    return f"{flag} is not among the {g.server} flags a spec may set{hint}; {lift}"


__all__ = ["GRAMMARS", "LLAMACPP", "VLLM", "ArgProblem", "Grammar", "check_args"]
