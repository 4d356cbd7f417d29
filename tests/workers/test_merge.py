"""Merge: the streaming merge equals peft's merge_and_unload bit for bit, and the merged model behaves like
base + adapter."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.workers.conftest import run_cli, tensors
from tuneops import storage
from tuneops.workers.merge import resolve_dtype, run_merge
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

pytestmark = pytest.mark.workers

# merged-model logits vs the unmerged adapter model (measured: ~7e-7 fp32, ~1e-3 fp16, ~1e-2 bf16)
LOGIT_TOL = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 6e-2}


CASES = [
    ("llama", "llama-lora"),
    ("llama", "llama-rich"),  # rank/alpha patterns, embedding LoRA, modules_to_save
    ("mistral", "mistral-lora"),
    ("mistral", "mistral-rslora"),
]


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("base", "adapter"), CASES)
def test_stream_equals_peft_bit_for_bit(
    models: dict[str, Path], tmp_path: Path, base: str, adapter: str, dtype: str
) -> None:
    s = run_merge(str(models[base]), str(models[adapter]), str(tmp_path / "s"), dtype=dtype, method="stream")
    p = run_merge(str(models[base]), str(models[adapter]), str(tmp_path / "p"), dtype=dtype, method="peft")
    assert s.method == "stream" and p.method == "peft"
    ts, tp = tensors(tmp_path / "s"), tensors(tmp_path / "p")
    base_t = tensors(models[base])
    assert set(ts) == set(tp)
    want = getattr(torch, dtype)
    changed = 0
    for k in ts:
        assert ts[k].dtype == tp[k].dtype == want, k
        assert torch.equal(ts[k], tp[k]), f"{k} differs from peft's merge"
        changed += not torch.equal(ts[k], base_t[k].to(want))
    # every targeted projection changed (B is non-zero), so the equality above is not vacuous
    assert changed >= 8
    # sharded like the base, loadable, config dtype updated, tokenizer copied
    assert len(list((tmp_path / "s").glob("*.safetensors"))) == len(list(models[base].glob("*.safetensors")))
    assert json.loads((tmp_path / "s" / "config.json").read_text())["dtype"] == dtype
    assert (tmp_path / "s" / "tokenizer.model").is_file() and (
        tmp_path / "s" / "generation_config.json"
    ).is_file()


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("base", "adapter"), [("llama", "llama-rich"), ("mistral", "mistral-rslora")])
def test_merged_logits_match_adapter_model(
    models: dict[str, Path], tmp_path: Path, base: str, adapter: str, dtype: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_merge(str(models[base]), str(models[adapter]), str(tmp_path / "m"), dtype=dtype)
    td = getattr(torch, dtype)
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"), dtype=td)
    assert merged.dtype == td
    with_adapter = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(models[base]), dtype=td), str(models[adapter])
    )
    plain = AutoModelForCausalLM.from_pretrained(str(models[base]), dtype=td)
    ids = torch.randint(3, 512, (2, 48), generator=torch.Generator().manual_seed(0))
    lm, la, lb = _logits(merged, ids), _logits(with_adapter, ids), _logits(plain, ids)
    diff = (lm - la).abs().max().item()
    assert diff <= LOGIT_TOL[dtype], diff
    # the adapter matters far more than the tolerance
    assert (lb - la).abs().max().item() > 20 * LOGIT_TOL[dtype]


def test_dora_falls_back_to_peft(models: dict[str, Path], tmp_path: Path) -> None:
    r = run_merge(str(models["llama"]), str(models["llama-dora"]), str(tmp_path / "d"), dtype="float32")
    assert r.method == "peft"
    p = run_merge(
        str(models["llama"]), str(models["llama-dora"]), str(tmp_path / "p"), dtype="float32", method="peft"
    )
    assert r.artifact is not None and p.artifact is not None
    td, tp = tensors(tmp_path / "d"), tensors(tmp_path / "p")
    assert all(torch.equal(td[k], tp[k]) for k in tp)


@pytest.mark.parametrize(
    ("config", "chosen"),
    [
        ({"dtype": "bfloat16"}, "bfloat16"),
        ({"torch_dtype": "float32"}, "float32"),  # written by transformers before 5
        ({"torch_dtype": "torch.bfloat16"}, "bfloat16"),
        ({}, "float16"),
        ({"dtype": "float8_e4m3fn"}, "float16"),
    ],
)
def test_auto_dtype_is_the_base_models(config: dict[str, Any], chosen: str) -> None:
    assert resolve_dtype("auto", {"model_type": "llama", **config}) == chosen
    assert resolve_dtype("float32", {"dtype": "bfloat16"}) == "float32"  # asked for explicitly


def test_auto_dtype_keeps_a_bfloat16_base_in_bfloat16(tmp_path: Path) -> None:
    base = make_model(tmp_path / "bf16", TinyModelSpec(dtype="bfloat16", seed=7))
    adapter = make_adapter(base, tmp_path / "bf16-lora", TinyAdapterSpec(seed=8))
    result = run_merge(str(base), str(adapter), str(tmp_path / "m"))
    assert result.dtype == "bfloat16", "the dtype used is in the step's result"
    manifest = json.loads((tmp_path / "m" / "tuneops-artifact.json").read_text())
    assert manifest["parameters"]["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "m" / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in tensors(tmp_path / "m").values() if t.is_floating_point()} == {torch.bfloat16}


def test_cli_merge_reports_and_reuses(models: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    out = tmp_path / "merged"
    args = (
        "merge",
        "--base",
        str(models["llama"]),
        "--adapter",
        str(models["llama-lora"]),
        "--output",
        f"file://{out}",
    )
    env = {"TUNEOPS_TERMINATION_LOG": str(log)}
    first = run_cli(*args, "--dtype", "bfloat16", env=env)
    assert first.returncode == 0, first.stderr
    msg = json.loads(log.read_text())
    art = msg["artifact"]
    assert (
        art["uri"] == f"file://{out}"
        and art["format"] == "safetensors"
        and art["digest"].startswith("sha256:")
    )
    assert art["sizeBytes"] == sum(
        f.stat().st_size for f in out.iterdir() if f.name != "tuneops-artifact.json"
    )
    assert msg["method"] == "stream" and msg["dtype"] == "bfloat16" and "reused" not in art
    assert len(log.read_bytes()) < 4096
    manifest = json.loads((out / "tuneops-artifact.json").read_text())
    assert manifest["digest"] == art["digest"] and manifest["parameters"] == {
        "dtype": "bfloat16",
        "method": "stream",
    }
    assert set(manifest["inputs"]) == {"base", "adapter"} and "peft" in manifest["tools"]
    mtime = (out / "tuneops-artifact.json").stat().st_mtime_ns
    again = run_cli(*args, "--dtype", "bfloat16", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(log.read_text())["artifact"]["reused"] is True
    assert (out / "tuneops-artifact.json").stat().st_mtime_ns == mtime, "a complete artifact is not rewritten"
    other = run_cli(*args, "--dtype", "float32", env=env)
    assert other.returncode == 0 and "reused" not in json.loads(log.read_text())["artifact"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dtype", "float16", "--adapter", "{wide-lora}", "--base", "{llama}"), "shape mismatch"),
        (("--adapter", "{llama-lora}", "--base", "pvc://claim/../x"), "path traversal"),
        (("--adapter", "{llama-lora}", "--base", "gs://b/x"), "unsupported scheme"),
        (("--adapter", "{llama-lora}", "--base", "/nonexistent/model"), "does not exist"),
    ],
)
def test_cli_invalid_input_exits_2(
    models: dict[str, Path], tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    log = tmp_path / "log"
    filled = [a.format(**{k: str(v) for k, v in models.items()}) if a.startswith("{") else a for a in args]
    r = run_cli("merge", "--output", str(tmp_path / "o"), *filled, env={"TUNEOPS_TERMINATION_LOG": str(log)})
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert message in json.loads(log.read_text())["error"]
    assert not (tmp_path / "o").exists()


def test_default_termination_log_outside_a_pod_is_skipped(models: dict[str, Path]) -> None:
    default = Path("/dev/termination-log")
    existed = default.exists()
    env = {k: v for k, v in os.environ.items() if k != "TUNEOPS_TERMINATION_LOG"}
    r = run_cli("inspect", "--adapter", str(models["llama-lora"]), env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["adapter"]["rank"] == 8
    assert default.exists() == existed, "the worker must not create /dev/termination-log outside a Pod"


# ------------------------------------------------------------------------- the pass: pieces, hashing, checks


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Shapes that split into many row pieces with ragged ends (2750 rows = 21 x 128 + 62), bfloat16, sharded,
    and an adapter on all seven linear modules."""
    root = tmp_path_factory.mktemp("wide")
    spec = TinyModelSpec(hidden_size=1024, intermediate_size=2750, num_layers=1, num_heads=8, num_kv_heads=8,
                         dtype="bfloat16", max_shard_size="8MB", seed=21)  # fmt: skip
    base = make_model(root / "base", spec)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    adapter = make_adapter(
        base, root / "adapter", TinyAdapterSpec(r=16, alpha=32, target_modules=targets, seed=22)
    )
    return {"base": base, "adapter": adapter}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stream_in_small_pieces_equals_peft(
    wide: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dtype: str
) -> None:
    """Pieces of a few rows, delta blocks of MIN_ROWS, ragged last blocks: still peft's bits exactly."""
    from tuneops.workers import merge, mergeio

    monkeypatch.setattr(mergeio, "CHUNK", 300 << 10)  # 300 KiB: 150 bf16 rows of 1024, 75 rows of 2750...
    monkeypatch.setattr(merge, "DELTA_BLOCK_BYTES", 1)  # ...and every delta block MIN_ROWS rows
    s = run_merge(str(wide["base"]), str(wide["adapter"]), str(tmp_path / "s"), dtype=dtype, method="stream")
    p = run_merge(str(wide["base"]), str(wide["adapter"]), str(tmp_path / "p"), dtype=dtype, method="peft")
    assert s.method == "stream" and p.method == "peft"
    ts, tp, tb = tensors(tmp_path / "s"), tensors(tmp_path / "p"), tensors(wide["base"])
    assert set(ts) == set(tp)
    for k in ts:
        assert torch.equal(ts[k], tp[k]), f"{k} differs from peft's merge"
    assert sum(not torch.equal(ts[k], tb[k].to(ts[k].dtype)) for k in ts) == 7, (
        "all seven projections changed"
    )


def _with_manifest(src: Path, dst: Path) -> tuple[Path, str]:
    """A copy of a model folder published as an artifact (with its manifest)."""
    out = storage.Output.of(str(dst))
    staging = out.begin()
    for p in src.iterdir():
        shutil.copy2(p, staging / p.name)
    return dst, out.commit(format="safetensors").digest


def test_a_base_with_a_manifest_is_read_once_and_not_hashed_again(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest (self-consistent, the recorded digest, exactly the files there at their sizes) vouches for
    the base: its digest is the manifest's, and its weights are read once, by the merge, and hashed by no one."""
    from tuneops.storage import manifest as manifest_mod
    from tuneops.workers import merge as merge_mod
    from tuneops.workers import mergeio

    base, digest = _with_manifest(models["llama"], tmp_path / "base")
    hashed: list[Path] = []
    real = manifest_mod.sha256_file
    passes: list[mergeio.Rewritten] = []
    rewrite = mergeio.rewrite_safetensors

    def rewrite_spy(*args: Any, **kwargs: Any) -> mergeio.Rewritten:
        passes.append(rewrite(*args, **kwargs))
        return passes[-1]

    monkeypatch.setattr(merge_mod, "rewrite_safetensors", rewrite_spy)

    def spy(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(manifest_mod, "sha256_file", spy)
    monkeypatch.setattr(mergeio, "sha256_file", spy)
    monkeypatch.setenv("TUNEOPS_EXPECT_DIGESTS", json.dumps({f"file://{base}": digest}))
    out = tmp_path / "merged"
    r = run_merge(f"file://{base}", str(models["llama-lora"]), str(out), dtype="float32")
    assert r.artifact is not None and r.artifact.reused is None
    weights = [p for p in hashed if p.suffix == ".safetensors"]
    assert not [p for p in weights if base in p.parents], "the base's weights are not hashed on their own"
    assert passes and all(r.input is None for r in passes), "nor in the merge's read"
    assert not [p for p in hashed if out in p.parents or out.name in p.parent.name], (
        "nor is the output re-read"
    )
    m = storage.read_manifest(out)
    assert m is not None and storage.verify(out, m) == [], "the manifest from the writer's hashes is right"
    assert m.inputs is not None and m.inputs["base"]["digest"] == digest


def test_a_base_changed_after_its_manifest_is_refused_and_nothing_is_published(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With TUNEOPS_HASH_INPUTS=always, a base whose manifest vouches for it is hashed as it is read all the
    same, and a change that keeps every size is caught before anything is published."""
    from tuneops.storage.integrity import DigestMismatchError

    monkeypatch.setenv("TUNEOPS_HASH_INPUTS", "always")
    base, _ = _with_manifest(models["llama"], tmp_path / "base")
    shard = sorted(base.glob("*.safetensors"))[-1]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes: only a hash can tell
    shard.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError, match=f"sha256 of {shard.name} differs"):
        run_merge(str(base), str(models["llama-lora"]), str(tmp_path / "merged"), dtype="float32")
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged*")), "no staging folder left"


@pytest.mark.parametrize("with_manifest", [True, False])
def test_a_base_that_is_not_the_recorded_one_is_refused(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_manifest: bool
) -> None:
    """$TUNEOPS_EXPECT_DIGESTS keeps its meaning: with a manifest it is checked before any work; without one,
    against the digest of the bytes the merge read, before anything is published."""
    from tuneops.storage.integrity import DigestMismatchError

    if with_manifest:
        base, _ = _with_manifest(models["llama"], tmp_path / "base")
    else:
        base = tmp_path / "base"
        shutil.copytree(models["llama"], base)
    other = "sha256:" + "0" * 64
    monkeypatch.setenv("TUNEOPS_EXPECT_DIGESTS", json.dumps({str(base): other}))
    with pytest.raises(DigestMismatchError, match="differs from the recorded"):
        run_merge(str(base), str(models["llama-lora"]), str(tmp_path / "merged"), dtype="float32")
    assert not (tmp_path / "merged").exists()
    # the digest it does accept is the folder's own
    monkeypatch.setenv("TUNEOPS_EXPECT_DIGESTS", json.dumps({str(base): storage.digest_of(base)}))
    r = run_merge(str(base), str(models["llama-lora"]), str(tmp_path / "merged"), dtype="float32")
    assert r.artifact is not None
    m = storage.read_manifest(tmp_path / "merged")
    assert m is not None and m.inputs is not None
    assert m.inputs["base"]["digest"] == storage.digest_of(base), (
        "the digest taken in the read is the folder's"
    )


def _fail(*_: Any, **__: Any) -> Any:
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("where", ["read", "merge", "hash", "write"])
def test_a_failing_stage_ends_the_pass_with_its_error(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Whichever of the pass's threads fails, the merge raises that error (no hang) and publishes nothing."""
    from tuneops.workers import mergeio

    class FailingHash:
        def update(self, _: Any) -> None:
            _fail()

    if where == "read":
        monkeypatch.setattr(mergeio, "_read_into", _fail)
    elif where == "merge":
        monkeypatch.setattr(mergeio, "_merge_piece", _fail)
    elif where == "hash":
        real = mergeio.hashlib.sha256  # the output's hasher only: the stage runs on the thread "merge-hasher"
        hasher = "merge-hasher"
        monkeypatch.setattr(
            mergeio.hashlib,
            "sha256",
            lambda *a: FailingHash() if threading.current_thread().name == hasher else real(*a),
        )
    else:
        monkeypatch.setattr(mergeio, "_write_all", _fail)
    outcome: list[BaseException | None] = []

    def merge() -> None:
        try:
            run_merge(
                str(models["llama"]), str(models["llama-lora"]), str(tmp_path / "merged"), dtype="float32"
            )
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=merge, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), f"the merge hangs when its {where} stage fails"
    assert isinstance(outcome[0], OSError) and "No space left" in str(outcome[0])
    assert not (tmp_path / "merged").exists()
    assert not list(tmp_path.glob(".merged*")), "no staging folder left"
