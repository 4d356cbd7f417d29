"""GGUF quantization: llama.cpp's converter (HF -> GGUF at f16/bf16/f32/q8_0), then llama-quantize per type.

The model is downloaded first, in this process; the converter and the quantizer then run as subprocesses
without credentials in their environment, since the converter may run code from the model folder.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from tuneops import storage, toolpaths
from tuneops.api.quantizationjob import GGUF_TYPES
from tuneops.storage.manifest import tool_versions
from tuneops.workers.common import InvalidInput, thread_count
from tuneops.workers.customcode import clean_env, custom_code
from tuneops.workers.result import ArtifactResult, WorkerResult

log = logging.getLogger("tuneops.workers.gguf")

OUTTYPES = ("f16", "bf16", "f32", "q8_0")
# llama-quantize's types that need no importance matrix (the API's list), plus the float types it can also write.
QUANT_TYPES = (*GGUF_TYPES, "F16", "BF16", "F32")
K_QUANT_BLOCK = 256


def file_name(qtype: str) -> str:
    return f"model-{qtype}.gguf"


def _missing_tools() -> list[str]:
    need = [toolpaths.llamacpp_converter(), toolpaths.llamacpp_bin("llama-quantize")]
    return [str(p) for p in need if not p.exists()]


def _run(cmd: list[str], what: str, cwd: Path) -> None:
    log.info("%s: %s", what, " ".join(cmd))
    start = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=clean_env(os.environ), cwd=cwd
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-1500:]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
    log.info("%s done in %.1fs", what, time.monotonic() - start)


def convert(src: Path, out_file: Path, outtype: str, *, allow_custom_code: bool = False) -> None:
    """The converter, in the output's folder (not the model's, whose *.py could shadow modules), and unless
    custom code is allowed, under tuneops.workers.customcode, which keeps transformers from importing it."""
    converter = str(toolpaths.llamacpp_converter())
    runner = [sys.executable] if allow_custom_code else [sys.executable, "-m", "tuneops.workers.customcode"]
    cmd = [*runner, converter, str(src), "--outfile", str(out_file), "--outtype", outtype]
    _run(cmd, "convert", out_file.parent)


def quantize(src_file: Path, out_file: Path, qtype: str, threads: int) -> None:
    _run(
        [str(toolpaths.llamacpp_bin("llama-quantize")), str(src_file), str(out_file), qtype, str(threads)],
        f"quantize {qtype}",
        out_file.parent,
    )


def _check_types(src: Path, types: list[str]) -> None:
    import json

    cfg = json.loads((src / "config.json").read_text())
    rows = {cfg.get("hidden_size"), cfg.get("intermediate_size")}
    k_types = [t for t in types if "_K" in t]
    bad = sorted(str(r) for r in rows if isinstance(r, int) and r % K_QUANT_BLOCK)
    if k_types and bad:
        log.warning(
            "row sizes %s are not multiples of %d: llama.cpp falls back to other types for some tensors of %s",
            ", ".join(bad),
            K_QUANT_BLOCK,
            ", ".join(k_types),
        )


def run_gguf(
    source_uri: str,
    output_uri: str,
    *,
    types: list[str],
    outtype: str = "f16",
    allow_custom_code: bool = False,
) -> WorkerResult:
    types, outtype = _check_args(types, outtype)
    missing = _missing_tools()
    if missing:
        raise RuntimeError(f"llama.cpp tools not found ({', '.join(missing)}); run scripts/build-llamacpp.sh")
    out = storage.Output.of(output_uri)
    src = storage.fetch(source_uri)
    if not (src / "config.json").is_file():
        raise InvalidInput(f"{source_uri}: config.json not found (not a transformers model folder)")
    _check_custom_code(src, source_uri, allow_custom_code)
    _check_types(src, types)
    inputs = {"source": storage.digest_of(src)}
    params = {"types": types, "outtype": outtype}
    tools = tool_versions("torch", "transformers") | {"llama.cpp": toolpaths.LLAMACPP_VERSION}
    key = storage.reuse_key("quantize-gguf", inputs, params, tools)
    names = [file_name(t) for t in types]
    found = out.reusable(key)
    if found is not None:
        log.info("a complete GGUF artifact of the same inputs exists at %s: reusing it", output_uri)
        return _result(out.location(found), found, names, reused=True)
    staging = out.begin()
    try:
        _build(src, staging, types, names, outtype, allow_custom_code=allow_custom_code)
        manifest = out.commit(
            format="gguf",
            worker="quantize-gguf",
            key=key,
            inputs={"source": {"uri": source_uri, "digest": inputs["source"]}},
            parameters=params,
            tools=tools,
            notable=names,
        )
    except BaseException:
        out.abort()
        raise
    return _result(out.location(manifest), manifest, names, reused=False)


def _check_args(types: list[str], outtype: str) -> tuple[list[str], str]:
    """The requested types (upper case, deduplicated, Q4_K_M if none) and outtype (lower case), or refuse."""
    types = [t.upper() for t in types] or ["Q4_K_M"]
    unknown = [t for t in types if t not in QUANT_TYPES]
    if unknown:
        raise InvalidInput(f"unknown GGUF type(s) {', '.join(unknown)}; known: {', '.join(QUANT_TYPES)}")
    if outtype.lower() not in OUTTYPES:
        raise InvalidInput(f"outtype {outtype!r} is not one of {', '.join(OUTTYPES)}")
    return list(dict.fromkeys(types)), outtype.lower()


def _check_custom_code(src: Path, source_uri: str, allow_custom_code: bool) -> None:
    """Refuse a model folder that carries Python code unless the operator config allows it."""
    code = custom_code(src)
    if code and not allow_custom_code:
        raise InvalidInput(
            f"{source_uri} carries its own Python code ({'; '.join(code)}), which GGUF conversion could run; "
            "refused: the operator config does not allow custom code (allowCustomCode)"
        )
    if code:
        log.warning(
            "%s carries its own code (%s): the converter may run it, without credentials", source_uri, code
        )


def _build(
    src: Path, staging: Path, types: list[str], names: list[str], outtype: str, *, allow_custom_code: bool
) -> None:
    """Convert once at ``outtype``, then write one file per type: a hard link where no quantizing is needed."""
    threads = thread_count()
    base = staging / f".convert-{outtype}.gguf"
    convert(src, base, outtype, allow_custom_code=allow_custom_code)
    for t, name in zip(types, names, strict=True):
        if t.lower() == outtype:
            os.link(base, staging / name)
        else:
            quantize(base, staging / name, t, threads)
    base.unlink()


def _result(uri: str, m: storage.Manifest, names: list[str], *, reused: bool) -> WorkerResult:
    return WorkerResult(
        artifact=ArtifactResult(
            uri=uri,
            digest=m.digest,
            size_bytes=m.size_bytes,
            format=m.format,
            files=names,
            reused=reused or None,
        )
    )
