"""What a model server's failure comes down to: the root-cause line of vLLM's or llama.cpp's output.

A server that exits leaves its log tail as the container's termination message (FallbackToLogsOnError). For
vLLM that tail is a traceback whose last line is often a wrapper ("Engine core initialization failed. See root
cause above", "Call to add_lora method failed: Worker failed with error '...'"), its API errors show paths as
`<path>`, and a local model path that does not exist surfaces as a Hub "Repo id must be in the form" error.
llama.cpp prints its specific error first and generic ones ("failed to load model") after. `root_cause` picks
the line a person needs, with paths restored where the text holds them, and names a missing model path as such.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# vLLM's logger prefix, `(EngineCore pid=12) ERROR 12-07 06:04:42 [core.py:1750] `, and llama.cpp's
# `0.00.016.340 E ` (time, level).
_VLLM_PREFIX = re.compile(
    r"^\((?:[\w.-]+) pid=\d+\)\s*(?:(?:ERROR|WARNING|INFO|DEBUG|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?"
    r"\s+\[[^\]]*\]\s?)?"
)
_LLAMA_PREFIX = re.compile(r"^\d+\.\d+\.\d+\.\d+ (?P<level>[EWIDT]) ")
# A Python exception line: `ValueError: ...`, `vllm.exceptions.LoRAAdapterNotFoundError: ...`.
_EXCEPTION = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Failure|Interrupt))(?::\s*(?P<msg>.*))?$"
)
# Lines that only point elsewhere: never the root cause.
_WRAPPERS = re.compile(
    r"See root cause above|EngineCore failed to start|Engine core initialization failed|Failed core proc|"
    r"please check the stack trace above for the root cause$",
    re.IGNORECASE,
)
# Wrappers with the cause inside: unwrapped.
_UNWRAP = (
    re.compile(r"^Call to \w+ method failed: (?P<inner>.+)$"),
    re.compile(
        r"^Worker failed with error '(?P<inner>.+)', please check the stack trace above for the root cause$"
    ),
)
# llama.cpp's generic lines after the specific one.
_LLAMA_GENERIC = re.compile(
    r"failed to load model\b(?!.*:\s*\S)|failed to load model, |failed to load model '[^']*'$|"
    r"error loading model: llama_model_loader: failed to load model from|exiting due to|"
    r"encountered an error while trying to fit params|cleaning up before exit",
    re.IGNORECASE,
)
_FUNCTION = re.compile(r"^(?:(?:srv|cmn|slot|main)\s+)?[\w:~<>()]+:\s+")
# Hub's answer to a local path vLLM did not find (it then takes the path for a repo id).
_REPO_ID = re.compile(r"Repo id must be in the form .*?: '(?P<path>/[^']*)'")
_NOT_A_REPO = re.compile(
    r"(?P<path>/[^\s'\"]+) is not a (?:local folder and is not a )?valid model identifier"
)
_GGUF_MISSING = re.compile(r"failed to open GGUF file '(?P<path>[^']+)' \(No such file or directory\)")
_TUNEOPS_MODEL = re.compile(r"^tuneops: (?P<msg>model path \S+ does not exist.*)$")
SANITIZED = "<path>"


def _strip(line: str) -> str:
    return _VLLM_PREFIX.sub("", line.rstrip()).strip()


def _unwrap(message: str) -> str:
    for _ in range(4):
        for pattern in _UNWRAP:
            m = pattern.match(message)
            if m is not None:
                message = m["inner"]
                break
        else:
            return message
    return message


def _exceptions(lines: Iterable[str]) -> list[str]:
    """Every exception line that says something itself, as `ShortType: message` with wrappers unwrapped."""
    found: list[str] = []
    for raw in lines:
        line = _strip(raw)
        m = _EXCEPTION.match(line)
        if m is None or not m["msg"]:
            continue
        message = _unwrap(m["msg"].strip())
        if _WRAPPERS.search(message):
            continue
        found.append(f"{m['type'].rsplit('.', 1)[-1]}: {message}")
    return found


def _with_paths(line: str, others: Iterable[str]) -> str:
    """vLLM's API errors replace paths with `<path>`; another line of the same error may still hold them."""
    if SANITIZED not in line:
        return line
    body = line.split(": ", 1)[-1]
    pattern = re.compile(re.escape(body).replace(re.escape(SANITIZED), r"(/[^\s'\"]+?)") + r"\.?$")
    for other in others:
        if SANITIZED not in other and pattern.search(other.split(": ", 1)[-1]):
            return other
    return line


def _llama(lines: list[str]) -> str | None:
    """llama.cpp: the last specific error line (its generic ones follow the specific one)."""
    chosen: str | None = None
    for raw in lines:
        m = _LLAMA_PREFIX.match(raw)
        level = m["level"] if m else ""
        text = raw[m.end() :].strip() if m else raw.strip()
        if (
            level == "E" or (not m and re.search(r"\berror\b|failed to", text))
        ) and not _LLAMA_GENERIC.search(text):
            chosen = _FUNCTION.sub("", text)
    return chosen


def model_path_missing(text: str) -> str | None:
    """The local model path a server's error says does not exist, or None."""
    for pattern in (_REPO_ID, _NOT_A_REPO, _GGUF_MISSING):
        m = pattern.search(text)
        if m is not None:
            return m["path"]
    return None


def root_cause(text: str) -> str | None:
    """The line of a server's output (a log tail, a termination message) that says why it failed, or None when
    none stands out. A missing model path is named as such."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        m = _TUNEOPS_MODEL.match(_strip(line))
        if m is not None:
            return m["msg"]
    found = _exceptions(lines)
    cause = _with_paths(found[-1], reversed(found)) if found else _llama(lines)
    if cause is None:
        return None
    missing = model_path_missing(cause)
    if missing is not None:
        return f"model path {missing} does not exist"
    return cause


def restore_paths(message: str, *paths: str) -> str:
    """vLLM's API error with its `<path>` placeholders given back the paths the request named (in order; the
    last one repeats), so `No adapter found for <path>` reads `No adapter found for /mnt/pvc/adapters/a`."""
    if SANITIZED not in message or not paths:
        return message
    parts = message.split(SANITIZED)
    out = parts[0]
    for i, part in enumerate(parts[1:]):
        out += paths[min(i, len(paths) - 1)] + part
    return out
