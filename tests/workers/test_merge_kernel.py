"""The merge's native kernel: torch's LoRA arithmetic bit for bit, for every rank and shape it is used for; a
merge it does whole never imports torch; and what happens without it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.workers.conftest import tensors
from tuneops.workers import kernel as native
from tuneops.workers.common import InvalidInput
from tuneops.workers.inspect import Adapter
from tuneops.workers.merge import _needs_torch, _TorchLoader, run_merge, stream_merge
from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

pytestmark = pytest.mark.workers

CODE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


@pytest.fixture(scope="module")
def kern() -> native.Kernel:
    """The kernel `make setup` built (built here when this checkout has not been set up: cc is a test
    dependency, as for llama.cpp)."""
    native.build()
    k = native.load()
    assert k is not None, "the merge kernel must load where the tests run"
    return k


def _torch_merge(
    w: torch.Tensor, out: torch.dtype, b: torch.Tensor, a: torch.Tensor, s: float
) -> torch.Tensor:
    """peft's arithmetic as the streaming merge's torch path does it: the weight cast to the output dtype,
    delta = (B @ A) * scaling in float32, one in-place add."""
    w = w.to(out) if w.dtype != out else w.clone()
    w += (b @ a) * s
    return w


def _kernel_merge(
    k: native.Kernel, w: torch.Tensor, out: torch.dtype, b: torch.Tensor, a: torch.Tensor, s: float
) -> tuple[int, torch.Tensor]:
    res = torch.empty(w.shape, dtype=out)
    src = bytearray(w.contiguous().view(torch.uint8).numpy().tobytes())
    dst = memoryview(res.view(torch.uint8).numpy()).cast("B")
    rc = k.merge_rows(
        memoryview(src),
        CODE[w.dtype],
        dst,
        CODE[out],
        b.numpy(),
        a.numpy(),
        w.shape[0],
        w.shape[1],
        a.shape[0],
        s,
    )
    return rc, res


SHAPES = [(32, 32), (64, 96), (257, 300), (300, 1031), (512, 2048)]  # column tails of every length mod 32
RANKS = [1, 3, 8, 16, 24, 64, 100, 128]
SCALINGS = [2.0, 0.7071067811865476, 1 / 3, 16.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rank", RANKS)
def test_the_kernel_equals_torch_bit_for_bit(kern: native.Kernel, dtype: torch.dtype, rank: int) -> None:
    g = torch.Generator().manual_seed(rank)
    for i, (rows, cols) in enumerate(SHAPES):
        assert native.fits(rows, cols, rank, CODE[dtype], CODE[dtype])
        w = (torch.randn(rows, cols, generator=g) * 0.02).to(dtype)
        a = torch.randn(rank, cols, generator=g) * 0.01
        b = torch.randn(rows, rank, generator=g) * 0.01
        s = SCALINGS[i % len(SCALINGS)]
        rc, got = _kernel_merge(kern, w, dtype, b, a, s)
        want = _torch_merge(w, dtype, b, a, s)
        assert rc == 0
        assert torch.equal(got, want), (
            f"{rows}x{cols} rank {rank}: {(got != want).sum().item()} elements differ"
        )
        assert not torch.equal(got, w), "the delta is not vacuous"


def test_the_kernel_merges_in_place_block_by_block(kern: native.Kernel) -> None:
    """The merge hands the kernel a piece of rows and the same buffer to write: any split gives torch's bits."""
    g = torch.Generator().manual_seed(5)
    rows, cols, rank = 700, 1100, 16
    w = (torch.randn(rows, cols, generator=g) * 0.02).to(torch.bfloat16)
    a, b = torch.randn(rank, cols, generator=g) * 0.01, torch.randn(rows, rank, generator=g) * 0.01
    buf = bytearray(w.view(torch.uint8).numpy().tobytes())
    an, bn = a.numpy(), b.numpy()
    row_bytes = cols * 2
    for r0, r1 in ((0, 1), (1, 129), (129, 500), (500, 700)):
        view = memoryview(buf)[r0 * row_bytes : r1 * row_bytes]
        assert kern.merge_rows(view, "BF16", view, "BF16", bn[r0:r1], an, r1 - r0, cols, rank, 2.0) == 0
    got = torch.frombuffer(buf, dtype=torch.bfloat16).view(rows, cols)
    assert torch.equal(got, _torch_merge(w, torch.bfloat16, b, a, 2.0))


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (torch.float32, torch.bfloat16),
        (torch.float32, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.bfloat16),
    ],
)
def test_dtype_changes_round_the_weight_first_as_torch_does(
    kern: native.Kernel, src: torch.dtype, dst: torch.dtype
) -> None:
    g = torch.Generator().manual_seed(9)
    w = (torch.randn(96, 200, generator=g) * 0.02).to(src)
    a, b = torch.randn(16, 200, generator=g) * 0.01, torch.randn(96, 16, generator=g) * 0.01
    rc, got = _kernel_merge(kern, w, dst, b, a, 0.5)
    assert rc == 0 and torch.equal(got, _torch_merge(w, dst, b, a, 0.5))


def test_infinities_follow_ieee_and_nan_is_reported(kern: native.Kernel) -> None:
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(64, 64, generator=g) * 0.02).to(torch.bfloat16)
    a, b = torch.randn(8, 64, generator=g) * 0.01, torch.randn(64, 8, generator=g) * 0.01
    w[3, 5] = float("inf")
    w[7, 9] = 3.0e38  # near bfloat16's largest finite value: stays finite, rounded as torch rounds it
    rc, got = _kernel_merge(kern, w, torch.bfloat16, b, a, 2.0)
    assert rc == 0 and torch.equal(got, _torch_merge(w, torch.bfloat16, b, a, 2.0))
    w[10, 11] = float("nan")
    rc, _ = _kernel_merge(kern, w, torch.bfloat16, b, a, 2.0)
    assert rc == 1


def test_shapes_and_ranks_outside_its_range_are_left_to_torch() -> None:
    assert not native.fits(16, 4096, 16, "BF16", "BF16"), "a few rows: the BLAS takes other paths"
    assert not native.fits(4096, 8, 16, "BF16", "BF16")
    assert not native.fits(4096, 4096, 256, "BF16", "BF16"), "the BLAS sums large ranks in blocks"
    assert not native.fits(4096, 4096, 16, "F32", "BF16"), "a merge that casts goes through torch"
    assert native.fits(4096, 11008, 128, "F16", "F16")


def test_modes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kern: native.Kernel) -> None:
    monkeypatch.setenv(native.KERNEL_ENV, "torch")
    assert native.load() is None
    monkeypatch.setenv(native.KERNEL_ENV, "native")
    monkeypatch.setenv(native.LIB_ENV, str(tmp_path / "missing.so"))
    with pytest.raises(native.KernelUnavailable, match="not built"):
        native.load()
    monkeypatch.setenv(native.KERNEL_ENV, "auto")
    assert native.load() is None, "auto without the library: torch"
    monkeypatch.setenv(native.LIB_ENV, str(kern.path))
    assert native.load() is not None
    monkeypatch.setenv(native.KERNEL_ENV, "fast")
    with pytest.raises(native.KernelUnavailable, match="auto, native or torch"):
        native.load()


def test_a_build_is_named_by_its_source(tmp_path: Path) -> None:
    out = native.build(tmp_path / native.lib_name())
    assert out.is_file() and native.lib_name() in out.name
    assert native.build(out) == out, "built once"


# ---- the merge with it ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def half_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kernel-models")
    out = {}
    for dtype in ("bfloat16", "float16"):
        base = make_model(root / dtype, TinyModelSpec(dtype=dtype, seed=11))
        out[dtype] = base
        out[f"{dtype}-adapter"] = make_adapter(base, root / f"{dtype}-adapter", TinyAdapterSpec(r=8, seed=12))
    return out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_merge_in_the_weights_dtype_is_the_kernels_and_equals_peft(
    half_models: dict[str, Path], tmp_path: Path, dtype: str, kern: native.Kernel
) -> None:
    s = run_merge(
        str(half_models[dtype]), str(half_models[f"{dtype}-adapter"]), str(tmp_path / "s"), dtype=dtype
    )
    p = run_merge(
        str(half_models[dtype]),
        str(half_models[f"{dtype}-adapter"]),
        str(tmp_path / "p"),
        dtype=dtype,
        method="peft",
    )
    assert s.method == "stream" and p.method == "peft"
    ts, tp, tb = tensors(tmp_path / "s"), tensors(tmp_path / "p"), tensors(half_models[dtype])
    assert set(ts) == set(tp)
    changed = 0
    for k in ts:
        assert torch.equal(ts[k], tp[k]), f"{k} differs from peft's merge"
        changed += not torch.equal(ts[k], tb[k])
    assert changed >= 8
    adapter = Adapter.load(half_models[f"{dtype}-adapter"])
    streamed = stream_merge(half_models[dtype], adapter, _empty(tmp_path / "again"), dtype)
    assert streamed.kernel == "native"


def _empty(p: Path) -> Path:
    p.mkdir()
    return p


def test_a_merge_the_kernel_does_whole_never_imports_torch(
    half_models: dict[str, Path], tmp_path: Path
) -> None:
    """The worker's own process: torch is not in sys.modules when it exits (its import is seconds of CPU)."""
    probe = (
        "import sys\n"
        "from tuneops.workers.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n"
        "sys.exit(rc)\n"
    )
    env = {
        **os.environ,
        "TUNEOPS_TERMINATION_LOG": str(tmp_path / "termination-log"),
        native.KERNEL_ENV: "native",
    }
    argv = [
        "merge",
        "--base",
        str(half_models["bfloat16"]),
        "--adapter",
        str(half_models["bfloat16-adapter"]),
        "--output",
        f"file://{tmp_path / 'out'}",
        "--dtype",
        "bfloat16",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "torch not imported"
    assert "kernel native, torch not imported" in proc.stderr
    assert json.loads((tmp_path / "termination-log").read_text())["artifact"]["digest"].startswith("sha256:")


def test_a_merge_that_casts_imports_torch_up_front(half_models: dict[str, Path], kern: native.Kernel) -> None:
    from tuneops.workers.common import safetensors_shards
    from tuneops.workers.merge import _names

    names = _names(Adapter.load(half_models["bfloat16-adapter"]))
    shards = safetensors_shards(half_models["bfloat16"])
    assert not _needs_torch(shards, names, "bfloat16", kern)
    assert _needs_torch(shards, names, "float32", kern), "every weight is cast"
    assert _needs_torch(shards, names, "bfloat16", None), "no kernel"


def test_torch_is_imported_when_a_tensor_turns_out_to_need_it(half_models: dict[str, Path]) -> None:
    """Were the prediction wrong, the first tensor that needs torch starts its import: slower, not wrong."""
    from tuneops.workers.merge import _names

    adapter = Adapter.load(half_models["bfloat16-adapter"])
    loader = _TorchLoader(adapter, _names(adapter), start=False)
    assert not loader.started
    plan = loader.plan()
    assert loader.started and plan.linear
    loader.close()


def test_a_nan_in_the_base_is_refused_with_the_tensor_named(
    half_models: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in half_models["bfloat16"].iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    shard = next(
        f
        for f in sorted(half_models["bfloat16"].glob("*.safetensors"))
        if any(k.endswith("q_proj.weight") for k in load_file(str(f)))
    )
    t = load_file(str(shard))
    key = next(k for k in sorted(t) if k.endswith("q_proj.weight"))
    t[key] = t[key].clone()
    t[key][1, 2] = float("nan")
    save_file(t, str(bad / shard.name), metadata={"format": "pt"})
    with pytest.raises(InvalidInput, match=rf"{key}: the merged weight has NaN values"):
        run_merge(str(bad), str(half_models["bfloat16-adapter"]), str(tmp_path / "out"), dtype="bfloat16")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing published"


def test_adapter_tensors_read_without_torch_are_torchs_float(half_models: dict[str, Path]) -> None:
    from safetensors.torch import load_file

    from tuneops.workers.inspect import PEFT_PREFIX
    from tuneops.workers.merge import _adapter_f32

    adapter = Adapter.load(half_models["float16-adapter"])
    want = {k.removeprefix(PEFT_PREFIX): v.float() for k, v in load_file(str(adapter.weights_file)).items()}
    got = _adapter_f32(adapter, set(want))
    for k, v in want.items():
        assert got[k].dtype == np.float32 and got[k].flags.c_contiguous
        assert torch.equal(torch.from_numpy(got[k]), v), k


def test_an_adapter_whose_a_and_b_disagree_is_refused_not_read_past(
    half_models: dict[str, Path], tmp_path: Path
) -> None:
    """The kernel trusts its sizes: an A of rank 8 with a B of rank 4 (an untrusted adapter) is refused before
    any pointer reaches it."""
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "adapter"
    shutil.copytree(half_models["bfloat16-adapter"], bad)
    t = load_file(str(bad / "adapter_model.safetensors"))
    key = next(k for k in sorted(t) if k.endswith("q_proj.lora_B.weight"))
    t[key] = t[key][:, :4].contiguous()
    save_file(t, str(bad / "adapter_model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InvalidInput):
        run_merge(str(half_models["bfloat16"]), str(bad), str(tmp_path / "out"), dtype="bfloat16")


def test_the_kernel_checks_every_size_it_is_given(kern: native.Kernel) -> None:
    w = bytearray(64 * 64 * 2)
    a, b = np.zeros((8, 64), np.float32), np.zeros((64, 8), np.float32)
    with pytest.raises(ValueError, match="fewer than"):
        kern.merge_rows(memoryview(w)[:-2], "BF16", memoryview(w), "BF16", b, a, 64, 64, 8, 1.0)
    with pytest.raises(ValueError, match="shape"):
        kern.merge_rows(memoryview(w), "BF16", memoryview(w), "BF16", b[:, :4].copy(), a, 64, 64, 8, 1.0)
    with pytest.raises(ValueError, match="float32"):
        kern.merge_rows(memoryview(w), "BF16", memoryview(w), "BF16", b, a.astype(np.float64), 64, 64, 8, 1.0)
    assert kern.merge_rows(memoryview(w), "BF16", memoryview(w), "BF16", b, a, 64, 64, 8, 1.0) == 0


def test_the_torch_path_writes_the_same_bytes(
    half_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kern: native.Kernel
) -> None:
    """TUNEOPS_MERGE_KERNEL=torch (a worker without the kernel) and the kernel publish the same files."""
    base, adapter = str(half_models["bfloat16"]), str(half_models["bfloat16-adapter"])
    monkeypatch.setenv(native.KERNEL_ENV, "native")
    k = run_merge(base, adapter, str(tmp_path / "k"), dtype="bfloat16")
    monkeypatch.setenv(native.KERNEL_ENV, "torch")
    t = run_merge(base, adapter, str(tmp_path / "t"), dtype="bfloat16")
    assert k.artifact is not None and t.artifact is not None
    assert k.artifact.digest == t.artifact.digest
