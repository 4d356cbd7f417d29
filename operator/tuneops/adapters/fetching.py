"""Adapters a serving Pod's loader fetches (s3://, hf://...@revision): the sync call, and what it means for the
Pod's plan.

The loader runs in a tenant's Pod, so its answer is checked like a server's: a path is accepted only as an
absolute, normalized ``.../<64 hex>`` whose last part is the digest it reports (the loader and vLLM mount the
cache at the same path, so the loader's path is the one vLLM reads; it is used for that Pod only), a state only
from the known three, and messages are short printable excerpts. A loader that lies can at worst make its own
Pod's server load a folder that Pod can read, which the Pod's owner could do anyway.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict

from tuneops.adapters.client import AdapterAPIError, AdapterClient, error_message, excerpt
from tuneops.adapters.types import AdapterPodState, AdapterState, DesiredAdapter, ServedModels

SYNC_BODY_MAX = 1 << 20
SYNC_TIMEOUT_S = 10.0
_HEX = re.compile(r"^[0-9a-f]{64}$")


class Fetched(BaseModel):
    """One adapter as the Pod's loader reports it."""

    model_config = ConfigDict(frozen=True)

    state: str  # Fetching | Ready | Failed
    path: str = ""
    digest: str = ""
    reason: str = ""
    message: str = ""


def _content_folder(path: str, hexdigest: str) -> bool:
    return (
        path.startswith("/")
        and posixpath.normpath(path) == path
        and posixpath.basename(path) == hexdigest
        and bool(_HEX.match(hexdigest))
    )


def parse_answer(body: Any, names: set[str]) -> dict[str, Fetched]:
    """The loader's answer for the adapters asked for (``names``); anything malformed is an AdapterAPIError."""
    if not isinstance(body, Mapping) or not isinstance(body.get("adapters"), Mapping):
        raise AdapterAPIError(200, "the adapter loader's answer has no 'adapters' object")
    out: dict[str, Fetched] = {}
    for name in names:
        entry = body["adapters"].get(name)
        if not isinstance(entry, Mapping) or entry.get("state") not in ("Fetching", "Ready", "Failed"):
            out[name] = Fetched(state="Fetching")  # asked for, not reported yet: the next pass asks again
            continue
        state = str(entry["state"])
        path, digest = str(entry.get("path") or ""), str(entry.get("digest") or "")
        if state == "Ready":
            hexdigest = digest.removeprefix("sha256:")
            if not digest.startswith("sha256:") or not _content_folder(path, hexdigest):
                raise AdapterAPIError(200, f"the adapter loader reported {excerpt(path, 80)!r} for {name}: not a "
                                      "content-addressed folder of its cache")  # fmt: skip
        out[name] = Fetched(
            state=state,
            path=path if state == "Ready" else "",
            digest=digest if state == "Ready" else "",
            reason=excerpt(str(entry.get("reason") or ""), 40),
            message=excerpt(str(entry.get("message") or "")),
        )
    return out


class LoaderClient(AdapterClient):
    """The loader's sync API on one Pod (same limits as the server's: capped bodies, no redirects, the pass's
    deadline)."""

    async def sync(self, fetched: Mapping[str, DesiredAdapter], keep: list[str]) -> dict[str, Fetched]:
        payload = {
            "adapters": [
                {"name": d.name, "uri": d.uri, "digest": d.digest, "role": d.role}
                for d in sorted(fetched.values(), key=lambda d: d.name)
            ],
            "keep": sorted(keep),
        }
        status, text = await self._call(
            "POST", "/v1/sync", SYNC_BODY_MAX, SYNC_TIMEOUT_S, payload, whole=True
        )
        if status != 200:
            raise AdapterAPIError(status, error_message(status, text))
        try:
            body = json.loads(text)
        except ValueError:
            raise AdapterAPIError(
                status, f"the adapter loader's answer is not JSON: {excerpt(text, 80)!r}"
            ) from None
        return parse_answer(body, set(fetched))


def kept_paths(served: ServedModels) -> list[str]:
    """The content-addressed folders the server still reads adapters from: the loader must not delete them yet
    (it ignores any that are not in its cache)."""
    return sorted({p for p in served.adapters.values() if _content_folder(p, posixpath.basename(p))})


def resolve(
    desired: Mapping[str, DesiredAdapter], served: ServedModels, fetched: Mapping[str, Fetched]
) -> tuple[dict[str, DesiredAdapter], dict[str, AdapterPodState]]:
    """The Pod's plan input once its loader has answered, and the states of adapters still on their way.

    A Ready folder becomes the adapter's path (content-addressed: new weights are a new path, so the planner
    reloads). One still fetching, or failed, is not loaded: if the server serves an older version, that version
    stays (desired at its served path, so nothing unloads it) while the state says Loading or Failed."""
    plan: dict[str, DesiredAdapter] = {}
    states: dict[str, AdapterPodState] = {}
    for name, want in desired.items():
        if not want.uri:
            plan[name] = want
            continue
        got = fetched.get(name) or Fetched(state="Fetching")
        if got.state == "Ready":
            plan[name] = want.model_copy(update={"path": got.path, "digest": want.digest or got.digest})
            continue
        if name in served.adapters:
            plan[name] = want.model_copy(update={"path": served.adapters[name]})
        if got.state == "Failed":
            states[name] = AdapterPodState(
                name=name, state=AdapterState.FAILED, digest=want.digest, attempts=1,
                message=excerpt(f"{got.reason or 'FetchFailed'}: the adapter loader could not fetch "
                                f"{want.uri}: {got.message}"),
            )  # fmt: skip
        else:
            states[name] = AdapterPodState(
                name=name, state=AdapterState.LOADING, digest=want.digest,
                message=got.message or f"the adapter loader is fetching {excerpt(want.uri, 120)}",
            )  # fmt: skip
    return plan, states
