"""Which local environment runs a container image on the local node: image patterns -> executables and env."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneops import toolpaths

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RuntimeConfigError(ValueError):
    """The image mapping file is malformed."""


@dataclass(frozen=True)
class Runtime:
    """A local stand-in for a container image.

    `images` are regular expressions matched (re.search) against the image reference. A container's
    command[0] is looked up in `commands` first, then in `path` (prepended to PATH), then on the system
    PATH. `entrypoint` plays the image's ENTRYPOINT when the container sets no command. `env` is the
    image's environment (the container's own env wins); `inherit_env` names variables copied from the
    node's environment when set there.
    """

    name: str
    images: tuple[str, ...]
    path: tuple[str, ...] = ()
    commands: Mapping[str, str] = field(default_factory=dict)
    entrypoint: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: tuple[str, ...] = ()

    def matches(self, image: str) -> bool:
        return any(re.search(p, image) for p in self.images)

    def search_path(self) -> str:
        return ":".join([*self.path, SYSTEM_PATH])

    def resolve(self, program: str) -> str | None:
        """The host executable for a container's command[0], or None when there is none."""
        if program in self.commands:
            return self.commands[program]
        if "/" in program:
            return program if os.access(program, os.X_OK) else None
        return shutil.which(program, path=self.search_path())

    def base_env(self) -> dict[str, str]:
        env = {"PATH": self.search_path(), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        for name in self.inherit_env:
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(self.env)
        return env

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Runtime:
        try:
            name = str(raw["name"])
            images = raw["images"]
        except KeyError as err:
            raise RuntimeConfigError(f"runtime entry needs {err.args[0]!r}: {dict(raw)}") from None
        if isinstance(images, str):
            images = [images]
        for pattern in images:
            try:
                re.compile(pattern)
            except re.error as err:
                raise RuntimeConfigError(f"runtime {name}: bad image pattern {pattern!r}: {err}") from None
        unknown = set(raw) - {"name", "images", "path", "commands", "entrypoint", "env", "inherit_env"}
        if unknown:
            raise RuntimeConfigError(f"runtime {name}: unknown keys {sorted(unknown)}")
        return cls(
            name=name,
            images=tuple(str(p) for p in images),
            path=tuple(str(p) for p in raw.get("path") or ()),
            commands={str(k): str(v) for k, v in (raw.get("commands") or {}).items()},
            entrypoint=tuple(str(p) for p in raw.get("entrypoint") or ()),
            env={str(k): str(v) for k, v in (raw.get("env") or {}).items()},
            inherit_env=tuple(str(p) for p in raw.get("inherit_env") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "images": list(self.images),
            "path": list(self.path),
            "commands": dict(self.commands),
            "entrypoint": list(self.entrypoint),
            "env": dict(self.env),
            "inherit_env": list(self.inherit_env),
        }


def _image_pattern(image: str) -> str:
    """A pattern for `image` and any other tag or digest of the same repository."""
    repo = re.split(r"[@]", image, maxsplit=1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    return "^" + re.escape(repo) + r"([:@]|$)"


def default_runtimes(extra_images: Mapping[str, Sequence[str]] | None = None) -> list[Runtime]:
    """The project's images mapped to what `make setup`, `make vllm` and `make llamacpp` install.

    `extra_images` adds image references (e.g. the operator config's images) to a runtime by name.
    """
    from tuneops.serving.llamacpp import llama_server_bin
    from tuneops.serving.vllm import vllm_cpu_env

    project_bin = str(Path(sys.executable).parent)
    vllm_bin = str(toolpaths.vllm_env_dir() / "bin")
    vllm_python = str(toolpaths.vllm_python())
    llama_server = str(llama_server_bin())
    cache = str(toolpaths.cache_dir())
    extra = {k: [_image_pattern(i) for i in v] for k, v in (extra_images or {}).items()}
    runtimes = [
        Runtime(
            name="tuneops",
            images=(r"(^|/)tuneops/(worker|gguf|operator)([:@]|$)", *extra.get("tuneops", [])),
            path=(project_bin,),
            commands={"python3": sys.executable, "python": sys.executable},
            entrypoint=(str(Path(project_bin) / "tuneops"),),
            # The worker images carry the llama.cpp tools; here they live in the build cache.
            env={"TUNEOPS_CACHE": cache, "PYTHONUNBUFFERED": "1"},
        ),
        Runtime(
            name="vllm",
            images=(r"(^|/)vllm/vllm-openai([:@]|$)", r"(^|/)vllm-cpu([:@]|$)", *extra.get("vllm", [])),
            path=(vllm_bin,),
            commands={"python3": vllm_python, "python": vllm_python, "vllm": str(Path(vllm_bin) / "vllm")},
            entrypoint=(vllm_python, "-m", "vllm.entrypoints.openai.api_server"),
            env={**vllm_cpu_env(), "PYTHONUNBUFFERED": "1"},
        ),
        Runtime(
            name="llamacpp",
            images=(r"(^|/)llama\.cpp([:@]|$)", *extra.get("llamacpp", [])),
            path=(str(Path(llama_server).parent),),
            commands={"llama-server": llama_server, "/app/llama-server": llama_server},
            entrypoint=(llama_server,),
        ),
        Runtime(
            name="python",
            images=(r"(^|/)python([:@]|$)",),
            path=(project_bin,),
            commands={"python3": sys.executable, "python": sys.executable},
            entrypoint=(sys.executable,),
            env={"PYTHONUNBUFFERED": "1"},
        ),
        Runtime(
            name="shell",
            images=(r"(^|/)(busybox|alpine|debian|ubuntu)([:@]|$)",),
            entrypoint=("/bin/sh",),
        ),
    ]
    return runtimes


def load_runtimes(
    path: Path | None, extra_images: Mapping[str, Sequence[str]] | None = None
) -> list[Runtime]:
    """Runtimes from a YAML file (`runtimes: [...]`, tried first) followed by the defaults.

    With `defaults: false` in the file, only the file's runtimes are used.
    """
    if path is None:
        return default_runtimes(extra_images)
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise RuntimeConfigError(f"{path}: expected a mapping with a `runtimes` list")
    entries = raw.get("runtimes") or []
    if not isinstance(entries, list):
        raise RuntimeConfigError(f"{path}: `runtimes` must be a list")
    runtimes = [Runtime.from_dict(e) for e in entries]
    if raw.get("defaults", True):
        runtimes += default_runtimes(extra_images)
    return runtimes


def find_runtime(runtimes: Sequence[Runtime], image: str) -> Runtime | None:
    return next((r for r in runtimes if r.matches(image)), None)
