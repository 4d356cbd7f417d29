"""Merge benchmark: the streaming merge vs peft's merge_and_unload on a synthetic >= 0.5B-parameter model.

Each method runs in a fresh process (peak RSS is its own VmHWM), alternating over ROUNDS;
the synthetic model and adapter are cached under $TUNEOPS_CACHE/bench. The outputs must be identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneops import toolpaths
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model, param_count

ROUNDS = 2
DTYPE = "bfloat16"
RSS_TARGET = 0.5
TIME_TARGET = 0.8
SPEC = TinyModelSpec(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=4096,
    num_layers=28,
    num_heads=16,
    num_kv_heads=8,
    dtype=DTYPE,
    max_shard_size="2GB",  # a 0.5B checkpoint is usually one file: the hardest case for streaming
    tokenizer=False,
    seed=7,
)
ADAPTER = TinyAdapterSpec(
    r=16,
    alpha=32,
    target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    b_std=0.01,
    seed=8,
)

_CHILD = """
import json, sys, time
from pathlib import Path
from tuneops.workers.common import configure_threads
configure_threads()
method, base, adapter, out, dtype = sys.argv[1:6]
if method == "stream":
    from tuneops.workers.inspect import Adapter
    from tuneops.workers.merge import stream_merge
    start = time.monotonic()
    stream_merge(Path(base), Adapter.load(Path(adapter)), Path(out), dtype)
else:
    from tuneops.workers.merge import peft_merge
    start = time.monotonic()
    peft_merge(Path(base), Path(adapter), Path(out), dtype)
seconds = time.monotonic() - start
# VmHWM: this process's peak resident set since exec (getrusage would report the forking parent's size)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(json.dumps({"seconds": seconds, "peak_kib": int(hwm)}))
"""


def models() -> tuple[Path, Path]:
    """The synthetic base and adapter, made once and cached (the base is ~1 GB in bf16)."""
    key = hashlib.sha256(json.dumps([asdict(SPEC), asdict(ADAPTER)], sort_keys=True).encode()).hexdigest()[
        :12
    ]
    root = toolpaths.cache_dir() / "bench" / f"merge-{key}"
    done = root / "complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        print(
            f"bench merge: making a {param_count(SPEC) / 1e6:.0f}M-parameter model in {root}", file=sys.stderr
        )
        make_model(root / "base", SPEC)
        make_adapter(root / "base", root / "adapter", ADAPTER)
        done.write_text("ok\n")
    return root / "base", root / "adapter"


def measure(method: str, base: Path, adapter: Path, out: Path) -> tuple[float, float]:
    """(merge seconds, peak RSS MB) of one method in a fresh process."""
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, method, str(base), str(adapter), str(out), DTYPE],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{method} merge failed with exit code {proc.returncode}")
    got = json.loads(stdout.strip().splitlines()[-1])
    return float(got["seconds"]), got["peak_kib"] / 1024.0


def identical(a: Path, b: Path) -> bool:
    """Tensor-by-tensor equality of two merged models (read one tensor at a time)."""
    import torch
    from safetensors import safe_open

    def index(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                out.update(dict.fromkeys(h.keys(), f))
        return out

    ia, ib = index(a), index(b)
    if set(ia) != set(ib):
        return False
    for k in ia:
        with safe_open(str(ia[k]), framework="pt") as fa, safe_open(str(ib[k]), framework="pt") as fb:
            if not torch.equal(fa.get_tensor(k), fb.get_tensor(k)):
                return False
    return True


def run() -> list[dict[str, Any]]:
    base, adapter = models()
    times: dict[str, list[float]] = {"stream": [], "peft": []}
    rss: dict[str, list[float]] = {"stream": [], "peft": []}
    with tempfile.TemporaryDirectory(prefix="tuneops-bench-merge-", dir=toolpaths.cache_dir()) as tmp:
        for i in range(ROUNDS):
            # alternate, so that load from other work on the machine hits both alike
            for method in ("peft", "stream") if i % 2 == 0 else ("stream", "peft"):
                out = Path(tmp) / f"{method}-{i}"
                t, r = measure(method, base, adapter, out)
                times[method].append(t)
                rss[method].append(r)
                if i < ROUNDS - 1:
                    shutil.rmtree(out)
        same = identical(Path(tmp) / f"stream-{ROUNDS - 1}", Path(tmp) / f"peft-{ROUNDS - 1}")
    params = param_count(SPEC) / 1e6
    s_t, p_t = min(times["stream"]), min(times["peft"])
    s_r, p_r = max(rss["stream"]), max(rss["peft"])
    label = f"{params:.0f}M params, {DTYPE}, one 1 GB shard"
    return [
        {
            "name": f"merge: peak RSS stream vs peft ({label})",
            "value": round(s_r),
            "unit": "MB",
            "baseline": round(p_r),
            "ratio": round(s_r / p_r, 3),
            "target": f"ratio <= {RSS_TARGET}",
        },
        {
            "name": f"merge: wall time stream vs peft (best of {ROUNDS})",
            "value": round(s_t, 2),
            "unit": "s",
            "baseline": round(p_t, 2),
            "ratio": round(s_t / p_t, 3),
            "target": f"ratio <= {TIME_TARGET}",
        },
        {
            "name": "merge: stream output equals peft output, tensor for tensor",
            "value": "identical" if same else "DIFFERENT",
            "unit": "",
            "baseline": None,
            "ratio": None,
            "target": "identical",
        },
    ]


if __name__ == "__main__":
    start = time.monotonic()
    for row in run():
        print(row)
    print(f"{time.monotonic() - start:.0f}s", file=sys.stderr)
