"""The root-cause line of vLLM's and llama.cpp's real failure output (tests/unit/fixtures/server_errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneops.serving.errors import restore_paths, root_cause

FIXTURES = Path(__file__).parent / "fixtures" / "server_errors"

# (fixture, root cause of the whole log as captured)
CAUSES = [
    ("model-missing", "model path /nonexistent/model does not exist"),
    ("model-typo-pvc", "model path /mnt/pvc/models/tiny-typo does not exist"),
    ("lora-rank", "ValueError: LoRA rank 16 is greater than max_lora_rank 8."),
    ("mp-lora-rank", "ValueError: LoRA rank 16 is greater than max_lora_rank 8."),
    # the last line says `<path>`; an earlier line of the same error still has the path
    ("lora-missing", "LoRAAdapterNotFoundError: Loading lora gone failed: No adapter found for /mnt/pvc/adapters/gone"),
    ("mp-lora-missing", "RuntimeError: Loading lora gone failed: No adapter found for /mnt/pvc/adapters/gone"),
    ("llamacpp-missing", "model path /mnt/pvc/models/tiny-typo.gguf does not exist"),
    ("llamacpp-bad-file", "invalid magic characters: '{?  ', expected 'GGUF'"),
]  # fmt: skip


@pytest.mark.parametrize(("fixture", "cause"), CAUSES, ids=[c[0] for c in CAUSES])
def test_root_cause(fixture: str, cause: str) -> None:
    assert root_cause((FIXTURES / f"{fixture}.log").read_text()) == cause


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("", None),
        ("INFO all fine\nshutting down", None),
        ("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}", None),
        ("(EngineCore pid=1) ERROR 12-07 06:06:01 [core.py:1] torch.OutOfMemoryError: CUDA out of memory.\n"
         "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
         "OutOfMemoryError: CUDA out of memory."),
        ("tuneops: model path /mnt/pvc/m/x does not exist; /mnt/pvc/m holds: y\nTraceback (most recent call last):\n"
         "huggingface_hub.errors.HFValidationError: Repo id must be in the form 'repo_name' or "
         "'namespace/repo_name': '/mnt/pvc/m/x'. Use `repo_type` argument if needed.",
         "model path /mnt/pvc/m/x does not exist; /mnt/pvc/m holds: y"),
    ],
)  # fmt: skip
def test_root_cause_of_short_texts(text: str, cause: str | None) -> None:
    assert root_cause(text) == cause


def test_restore_paths() -> None:
    assert restore_paths("Loading lora a failed: No adapter found for <path>", "/mnt/pvc/adapters/a") == (
        "Loading lora a failed: No adapter found for /mnt/pvc/adapters/a"
    )
    assert restore_paths("no placeholder", "/x") == "no placeholder"
    assert restore_paths("<path> and <path>", "/a", "/b") == "/a and /b"
