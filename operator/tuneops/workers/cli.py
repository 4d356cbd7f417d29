"""`tuneops worker <inspect|merge|quantize-awq|quantize-gguf|evaluate|fetch|compare|export-code|adapter-loader>`: the thin command line of the workers.

Exit codes: 0 success (evaluate: gate passed), 2 invalid input, 3 quality gate failed, 1 any other failure.
Each run writes one JSON object to $TUNEOPS_TERMINATION_LOG (default /dev/termination-log) and prints it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from tuneops.storage import InputError, InvalidURIError
from tuneops.storage.integrity import DigestMismatchError
from tuneops.workers import result as res
from tuneops.workers.common import InvalidInput, configure_threads, setup_logging

log = logging.getLogger("tuneops.workers")

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_GATE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuneops worker", description="Run one tuneops worker step.")
    sub = p.add_subparsers(dest="worker", required=True, metavar="WORKER")

    i = sub.add_parser("inspect", help="facts about a peft adapter and its fit with a base model")
    i.add_argument("--adapter", required=True, help="adapter URI")
    i.add_argument("--base", help="base model URI (checks modules and shapes)")
    i.add_argument("--merge", action="store_true", help="the adapter is to be merged (DoRA is reported)")
    i.add_argument("--max-lora-rank", type=int, help="largest rank the server allows")
    i.add_argument(
        "--publish", help="copy the adapter to <URI>/<digest> (a content-addressed path for serving)"
    )

    m = sub.add_parser("merge", help="merge a LoRA adapter into its base model")
    m.add_argument("--base", required=True)
    m.add_argument("--adapter", required=True)
    m.add_argument("--output", required=True)
    m.add_argument(
        "--dtype",
        choices=["auto", "float16", "bfloat16", "float32"],
        default="auto",
        help="precision of the merged weights; auto: the base model's (float16 when its config names none)",
    )
    m.add_argument("--method", choices=["stream", "peft"], default="stream")

    a = sub.add_parser("quantize-awq", help="AWQ 4-bit weights (compressed-tensors for vLLM)")
    a.add_argument("--source", required=True)
    a.add_argument("--output", required=True)
    a.add_argument("--backend", choices=["llm-compressor", "autoawq"], default="llm-compressor")
    a.add_argument("--bits", type=int, default=4)
    a.add_argument("--group-size", type=int, default=128)
    a.add_argument("--no-zero-point", action="store_true", help="symmetric quantization")
    a.add_argument("--calibration", help="calibration text URI (.txt or .jsonl with 'text')")
    a.add_argument("--samples", type=int, default=128)
    a.add_argument("--max-seq-len", type=int, default=512)

    g = sub.add_parser("quantize-gguf", help="GGUF files with llama.cpp")
    g.add_argument("--source", required=True)
    g.add_argument("--output", required=True)
    g.add_argument("--type", dest="types", action="append", default=[], help="quantization type (repeatable)")
    g.add_argument("--outtype", default="f16", help="precision of the converted file (f16, bf16, f32, q8_0)")
    g.add_argument(
        "--allow-custom-code",
        action="store_true",
        help="accept a model that carries its own Python code (the converter may run it, without credentials)",
    )

    e = sub.add_parser("evaluate", help="perplexity of a model against a reference: the quality gate")
    e.add_argument("--model", required=True)
    e.add_argument("--reference", required=True)
    e.add_argument("--dataset", help="evaluation text URI (.txt or .jsonl with 'text')")
    e.add_argument("--samples", type=int, default=64)
    e.add_argument("--max-seq-len", type=int, default=256)
    e.add_argument("--max-increase-pct", type=float, default=5.0)

    f = sub.add_parser("fetch", help="download a model into a folder (a serving Pod's init container)")
    f.add_argument("--source", required=True, help="model URI (s3://, hf://, pvc:// or file://)")
    f.add_argument("--dest", required=True, help="folder to fill (may be a mount point)")
    f.add_argument("--expect-digest", help="the digest recorded for the model: anything else is refused")
    c = sub.add_parser(
        "compare", help="merge or serve as LoRA: both measured with vllm bench serve (a vLLM image)"
    )
    c.add_argument("--base", required=True)
    c.add_argument("--adapter", required=True)
    c.add_argument("--merged", required=True)
    c.add_argument("--concurrency", default="1,8", help="comma-separated concurrency levels")
    c.add_argument("--input-len", type=int, default=256)
    c.add_argument("--output-len", type=int, default=128)
    c.add_argument("--prompts", type=int, default=64, help="requests at each concurrency")
    c.add_argument("--dataset", help="ShareGPT-format JSON URI (pvc:// or file://) instead of random tokens")
    c.add_argument("--max-model-len", type=int, default=2048)
    c.add_argument("--max-lora-rank", type=int, default=16)
    c.add_argument("--adapters", type=int, default=1, help="adapters one shared LoRA deployment would serve")
    c.add_argument("--kv-cache-bytes", type=int, help="each server's KV cache (vLLM on CPU; unset on GPUs)")

    x = sub.add_parser("export-code", help="copy this package to a folder (for a container of another image)")
    x.add_argument("--to", required=True, help="folder that gets tuneops/ (put it on PYTHONPATH)")
    from tuneops.workers import loader

    lo = sub.add_parser("adapter-loader", help="the per-Pod adapter cache beside vLLM (s3:// and hf://@rev)")
    loader.add_arguments(lo)
    return p


def _dispatch(args: argparse.Namespace) -> res.WorkerResult:
    if args.worker == "inspect":
        from tuneops.workers.inspect import run_inspect

        return run_inspect(
            args.adapter, args.base, merge=args.merge, max_lora_rank=args.max_lora_rank, publish=args.publish
        )
    if args.worker == "merge":
        from tuneops.workers.merge import run_merge

        return run_merge(args.base, args.adapter, args.output, dtype=args.dtype, method=args.method)
    if args.worker == "quantize-awq":
        from tuneops.workers.awq import run_awq

        return run_awq(
            args.source,
            args.output,
            backend=args.backend,
            bits=args.bits,
            group_size=args.group_size,
            zero_point=not args.no_zero_point,
            calibration_uri=args.calibration,
            samples=args.samples,
            max_seq_len=args.max_seq_len,
        )
    if args.worker == "quantize-gguf":
        from tuneops.workers.gguf import run_gguf

        return run_gguf(
            args.source,
            args.output,
            types=args.types,
            outtype=args.outtype,
            allow_custom_code=args.allow_custom_code,
        )
    if args.worker == "compare":
        from tuneops.workers.compare import compare_from_args

        return compare_from_args(args)
    if args.worker == "fetch":
        from tuneops.workers.fetch import run_fetch

        return run_fetch(args.source, args.dest, expect=args.expect_digest)
    from tuneops.workers.evaluate import run_evaluate

    return run_evaluate(
        args.model,
        args.reference,
        dataset_uri=args.dataset,
        samples=args.samples,
        max_seq_len=args.max_seq_len,
        max_increase_pct=args.max_increase_pct,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.worker == "adapter-loader":
        from tuneops.workers import loader

        return loader.main(args)
    if args.worker == "export-code":
        from tuneops.workers.common import export_code

        log.info("tuneops package copied to %s", export_code(args.to))
        return EXIT_OK
    # merge imports torch only when it needs it (workers/merge.py: on a thread of its own, beside its first
    # I/O; a merge the native kernel does whole never imports it); compare runs vLLM's processes
    threads = configure_threads(import_torch=args.worker not in ("merge", "compare"))
    log.info("tuneops worker %s (threads=%d)", args.worker, threads)
    try:
        out = _dispatch(args)
    except DigestMismatchError as exc:
        msg = f"integrity: {exc}"
        print(msg, file=sys.stderr)
        res.write(res.WorkerResult(error=msg, reason=exc.reason))
        return EXIT_INVALID
    except (InvalidInput, InvalidURIError, InputError) as exc:
        msg = f"invalid input: {exc}"
        print(msg, file=sys.stderr)
        res.write(res.WorkerResult(error=msg))
        return EXIT_INVALID
    except Exception as exc:
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {exc}"
        res.write(res.WorkerResult(error=msg))
        return EXIT_FAILED
    res.write(out)
    print(out.dumps())
    if out.passed is False:
        return EXIT_GATE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
