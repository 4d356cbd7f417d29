"""A model's own Python code: finding it in a model folder, and running llama.cpp's converter so that such code
cannot run, or runs without the worker's credentials.

`python -m tuneops.workers.customcode CONVERTER [ARGS...]` runs the converter with transformers unable to import
a model's code, whatever trust_remote_code the converter passes (it passes True for Qwen v1, ChatGLM and others).
"""

from __future__ import annotations

import os
import re
import runpy
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REFUSED = "the model needs its own Python code to load, and running a model's code is not allowed"

# What the converter needs from the worker's environment; everything else (tokens, keys, endpoints, the Pod's
# own settings) stays behind.
_KEPT = re.compile(
    r"(PATH|HOME|USER|LANG|LANGUAGE|TZ|TMPDIR|TEMP|TMP|LD_LIBRARY_PATH|VIRTUAL_ENV|NO_LOCAL_GGUF"
    r"|LC_\w+|PYTHON\w+|OMP_\w+|MKL_\w+|OPENBLAS_\w+|HF_HOME|HF_HUB_CACHE|HF_MODULES_CACHE|XDG_CACHE_HOME"
    r"|TUNEOPS_CACHE|TUNEOPS_LOG_LEVEL)"
)
# A kept name still goes when it looks like a credential (PYTHON_KEYRING_PASSWORD, a *_TOKEN_FILE path).
_SECRET = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|SESSION", re.IGNORECASE)
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def custom_code(model_dir: Path) -> list[str]:
    """Why `model_dir` carries code of its own: JSON files with an `auto_map` (transformers imports the classes
    it names from the folder) and Python files anywhere in it. Empty when it carries none."""
    import json

    found = []
    for path in sorted(model_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "auto_map" in data:
            found.append(f"{path.name} has an auto_map")
    scripts = sorted(str(p.relative_to(model_dir)) for p in model_dir.rglob("*.py"))
    if scripts:
        shown = ", ".join(scripts[:5]) + (f" and {len(scripts) - 5} more" if len(scripts) > 5 else "")
        found.append(f"Python files: {shown}")
    return found


def clean_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of a subprocess that reads an untrusted model: paths, locale, thread counts and caches,
    no credentials, and the Hugging Face libraries offline (the worker downloaded everything beforehand)."""
    env = {k: v for k, v in environ.items() if _KEPT.fullmatch(k) and not _SECRET.search(k)}
    return env | _OFFLINE


def forbid_remote_code() -> None:
    """Makes transformers refuse a model's code whatever its callers ask: trust_remote_code is resolved as False
    (a model that only loads with its code fails with transformers' own message) and the loaders of dynamic
    modules raise. Modules imported later take the replaced functions from dynamic_module_utils."""
    from transformers import dynamic_module_utils as dmu

    resolve: Callable[..., Any] = dmu.resolve_trust_remote_code

    def resolve_false(
        trust_remote_code: bool | None, model_name: str, has_local_code: bool, has_remote_code: bool,
        *args: Any, **kwargs: Any,
    ) -> Any:  # fmt: skip
        return resolve(False, model_name, has_local_code, has_remote_code, *args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(REFUSED)

    replaced = {
        "resolve_trust_remote_code": resolve_false,
        "get_class_from_dynamic_module": refuse,
        "get_class_in_module": refuse,
    }
    originals = {name: getattr(dmu, name) for name in replaced}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "transformers" or name.startswith("transformers.")):
            continue
        # vars(): the lazy top-level module would import on getattr
        for attr, fn in replaced.items():
            if vars(module).get(attr) is originals[attr]:
                setattr(module, attr, fn)


def run_converter(converter: Path, args: list[str]) -> None:
    """Runs llama.cpp's converter script in this process as its own __main__, after forbid_remote_code()."""
    forbid_remote_code()
    sys.path.insert(0, str(converter.parent))  # it imports its `conversion` package from beside it
    sys.argv = [str(converter), *args]
    runpy.run_path(str(converter), run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m tuneops.workers.customcode CONVERTER [ARGS...]", file=sys.stderr)
        return 2
    os.environ.update(_OFFLINE)
    run_converter(Path(args[0]), args[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
