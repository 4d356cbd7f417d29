"""What a spec may choose for its Pods under the operator config's allow-lists (reason NotAllowed).

A spec picks images, a ServiceAccount, a PriorityClass, server flags and environment. Each is held to an
allow-list that describes what the servers read, not to a list of what was thought dangerous: an image the
administrator named, a flag among the servers' tuning knobs (validation/args.py), an environment variable name
known to carry a plain setting. Names the operator sets itself are never the spec's: its API key, caches and
credentials would otherwise be replaced from a spec (the renderer also keeps its own value should one slip
through). A value from a Secret must come from a Secret the spec names for that purpose (spec.envSecrets), not
from one it names as a source's credentials.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.alias_generators import to_snake

from tuneops.api.common import JobTemplate
from tuneops.api.conditions import Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.types import Problem
from tuneops.validation.args import check_args
from tuneops.validation.credentials import check_credentials

# Environment the operator sets in server and worker containers. A spec never sets these: they carry the API key,
# the caches under the writable mounts, the per-source credentials, or what the LeaderWorkerSet controller injects.
# tests/security/test_env_policy.py renders every kind of Pod and checks this list covers what the renderers set.
OPERATOR_ENV = frozenset(
    {
        "DO_NOT_TRACK",
        "HOME",
        "TMPDIR",
        "XDG_CACHE_HOME",
        "TRITON_CACHE_DIR",
        "VLLM_CACHE_ROOT",
        "VLLM_NO_USAGE_STATS",
        "VLLM_API_KEY",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING",
        "LLAMA_API_KEY",
    }
)
OPERATOR_ENV_FAMILIES = ("HF_*", "TUNEOPS_*", "LWS_*")

# Env value sources a spec may use (core/v1 EnvVarSource), each a mapping of string fields.
_ENV_SOURCES = {
    "secretKeyRef": ("name", "key"),
    "configMapKeyRef": ("name", "key"),
    "fieldRef": ("fieldPath",),
    "resourceFieldRef": ("resource",),
}


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def operator_sets(name: str) -> bool:
    """Whether the operator sets environment variable `name` in the Pods it renders."""
    return name in OPERATOR_ENV or _matches(name, OPERATOR_ENV_FAMILIES)


# Names a spec may give its Pods, each checked against its allow-list: (attribute, field, what, allow key).
_NAMED_CHOICES = (
    ("service_account_name", "serviceAccountName", "ServiceAccount", "serviceAccounts"),
    ("priority_class_name", "priorityClassName", "PriorityClass", "priorityClasses"),
    ("runtime_class_name", "runtimeClassName", "RuntimeClass", "runtimeClasses"),
)


def _job_templates(spec: BaseModel) -> list[tuple[str, JobTemplate]]:
    template = getattr(spec, "job", None)
    return [("spec.job", template)] if isinstance(template, JobTemplate) else []


def check_pod_policy(spec: BaseModel, config: OperatorConfig) -> list[Problem]:
    """What the spec chooses for its Pods that the operator config does not allow (reason NotAllowed): images
    other than the configured ones and config.allow.images; ServiceAccounts, PriorityClasses and RuntimeClasses
    outside their lists; server flags outside the servers' safe flags and allow.extraArgs; env names outside
    allow.env or set by the operator; env values from Secrets not listed in spec.envSecrets; s3:// sources with
    no Secret of their own unless the config allows ambient credentials (validation/credentials.py)."""
    allow = config.allow
    problems: list[Problem] = []

    def not_allowed(fld: str, msg: str) -> None:
        problems.append(Problem(Reason.NOT_ALLOWED, fld, msg))

    configured = set(config.images.model_dump().values())
    scheduling: list[tuple[str, BaseModel]] = [*_job_templates(spec)]
    if isinstance(spec, InferenceServiceSpec):
        scheduling.append(("spec", spec))
    for at, holder in scheduling:
        image = getattr(holder, "image", None)
        if image and image not in configured and not _matches(image, allow.images):
            not_allowed(
                f"{at}.image",
                f"image {image!r} is not allowed by the operator config (allow.images; "
                "chart value config.allow.images); leave it unset for the configured image",
            )
        for attr, name, what, key in _NAMED_CHOICES:
            chosen = getattr(holder, attr, None)
            if chosen and not _matches(chosen, getattr(allow, to_snake(key))):
                not_allowed(
                    f"{at}.{name}", f"{what} {chosen!r} is not allowed by the operator config (allow.{key})"
                )
    if isinstance(spec, InferenceServiceSpec):
        problems += _env_problems(spec, config)
        problems += _arg_problems(spec, config)
    return problems + check_credentials(spec, config)


def _env_problems(spec: InferenceServiceSpec, config: OperatorConfig) -> list[Problem]:
    out: list[Problem] = []
    listed = set(spec.env_secrets or [])
    for i, env in enumerate(spec.env or []):
        at = f"spec.env[{i}]"
        if operator_sets(env.name):
            out.append(
                Problem(
                    Reason.NOT_ALLOWED,
                    f"{at}.name",
                    f"{env.name} is set by the operator (its API key, caches, credentials or the "
                    "LeaderWorkerSet's addresses); a spec cannot replace it",
                )
            )
        elif not _matches(env.name, config.allow.env):
            out.append(
                Problem(
                    Reason.NOT_ALLOWED,
                    f"{at}.name",
                    f"{env.name} is not among the environment variables a spec may set (allow.env; chart value "
                    "config.allow.env): servers read some variables as files, libraries or flags to load "
                    "(PYTHONPATH, LD_PRELOAD, LLAMA_ARG_*, ...), so only names known to carry plain settings "
                    "are allowed",
                )
            )
        if env.value_from is not None:
            out += _value_from_problems(f"{at}.valueFrom", env.value_from, listed)
    return out


def _value_from_problems(at: str, source: Any, listed: set[str]) -> list[Problem]:
    """A valueFrom is one EnvVarSource with string fields; a Secret only if spec.envSecrets lists it."""

    def refused(fld: str, msg: str) -> list[Problem]:
        return [Problem(Reason.NOT_ALLOWED, fld, msg)]

    if not isinstance(source, Mapping) or len(source) != 1:
        return refused(
            at, "must hold exactly one of secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef"
        )
    ((kind, ref),) = source.items()
    if kind not in _ENV_SOURCES:
        return refused(
            at, f"{kind} is not allowed (use secretKeyRef, configMapKeyRef, fieldRef or resourceFieldRef)"
        )
    if not isinstance(ref, Mapping):
        return refused(f"{at}.{kind}", "must be a mapping")
    for key in _ENV_SOURCES[kind]:
        if not isinstance(ref.get(key), str) or not ref.get(key):
            return refused(f"{at}.{kind}.{key}", f"must be a non-empty string, not {ref.get(key)!r}")
    if kind == "secretKeyRef" and ref["name"] not in listed:
        return refused(
            f"{at}.secretKeyRef.name",
            f"Secret {ref['name']!r} is not listed in spec.envSecrets; env may read only Secrets named there (a "
            "Secret named as a source's credentials or the API key serves that purpose only)",
        )
    return []


def _arg_problems(spec: InferenceServiceSpec, config: OperatorConfig) -> list[Problem]:
    settings = (
        ("vllm", "spec.vllm.extraArgs", spec.vllm.extra_args if spec.vllm else None),
        ("llamacpp", "spec.llamacpp.extraArgs", spec.llamacpp.extra_args if spec.llamacpp else None),
    )
    out: list[Problem] = []
    for runtime, at, args in settings:
        if not args:
            continue
        found = check_args(args, runtime, allowed=config.allow.extra_args, denied=config.allow.denied_args)  # type: ignore[arg-type]
        out += [Problem(Reason.NOT_ALLOWED, f"{at}[{p.index}]", p.message) for p in found]
    return out


__all__ = ["OPERATOR_ENV", "OPERATOR_ENV_FAMILIES", "check_pod_policy", "operator_sets"]
