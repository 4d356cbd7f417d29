"""Executes planned LoRA changes against one vLLM server's runtime API and reads back what it serves."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from tuneops.adapters.plan import plan_pod, record_results
from tuneops.adapters.types import (
    DEFAULT_MAX_ATTEMPTS,
    ActionKind,
    ActionResult,
    AdapterAction,
    DesiredAdapter,
    PodMemory,
    PodResult,
    ServedModels,
)

DEFAULT_TIMEOUT_S = 30.0
# large adapters are read from disk (or a network volume) inside the request
DEFAULT_LOAD_TIMEOUT_S = 300.0
_MAX_MESSAGE = 1000


def error_message(status: int, text: str) -> str:
    """The human part of a server error body (OpenAI style ``{"error": {"message"}}`` or FastAPI ``detail``)."""
    message = text.strip()
    try:
        body: Any = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            message = str(error["message"])
        elif isinstance(error, str) and error:
            message = error
        elif body.get("message"):
            message = str(body["message"])
        elif body.get("detail"):
            message = str(body["detail"])
    if not message:
        message = f"HTTP {status}"
    return message[:_MAX_MESSAGE]


class AdapterClient:
    """A thin client for one server: GET /v1/models, POST /v1/load_lora_adapter, /v1/unload_lora_adapter.

    Use it as an async context manager, or pass a shared ``aiohttp.ClientSession`` (not closed here).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._load_timeout = aiohttp.ClientTimeout(total=load_timeout_s)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AdapterClient:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("AdapterClient used outside 'async with' and without a session")
        return self._session

    async def list_models(self) -> ServedModels:
        async with self._http().get(
            f"{self.base_url}/v1/models", headers=self._headers, timeout=self._timeout
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise AdapterAPIError(response.status, error_message(response.status, text))
            try:
                body = json.loads(text)
            except ValueError as exc:
                raise AdapterAPIError(response.status, f"/v1/models is not JSON: {text[:200]!r}") from exc
        if not isinstance(body, Mapping):
            raise AdapterAPIError(200, "/v1/models did not return an object")
        try:
            return ServedModels.from_openai_models(body)
        except ValueError as exc:
            raise AdapterAPIError(200, str(exc)) from exc

    async def _post(self, action: AdapterAction, path: str, payload: dict[str, Any]) -> ActionResult:
        timeout = self._timeout if action.kind is ActionKind.UNLOAD else self._load_timeout
        start = time.monotonic()
        try:
            async with self._http().post(
                f"{self.base_url}{path}", json=payload, headers=self._headers, timeout=timeout
            ) as response:
                text = await response.text()
                ok = 200 <= response.status < 300
                return ActionResult(
                    action=action,
                    ok=ok,
                    status=response.status,
                    message="" if ok else error_message(response.status, text),
                    seconds=time.monotonic() - start,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return ActionResult(
                action=action,
                ok=False,
                message=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                seconds=time.monotonic() - start,
            )

    async def apply(self, action: AdapterAction) -> ActionResult:
        if action.kind is ActionKind.UNLOAD:
            return await self._post(action, "/v1/unload_lora_adapter", {"lora_name": action.name})
        payload: dict[str, Any] = {"lora_name": action.name, "lora_path": action.path}
        if action.kind is ActionKind.LOAD_INPLACE:
            payload["load_inplace"] = True
        return await self._post(action, "/v1/load_lora_adapter", payload)

    async def apply_all(self, actions: Sequence[AdapterAction]) -> tuple[ActionResult, ...]:
        # in plan order (unloads first, to free slots); the server loads adapters one at a time anyway
        return tuple([await self.apply(action) for action in actions])


class AdapterAPIError(Exception):
    """The server answered a read with an error (or something that is not a model list)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


async def reconcile_pod(
    pod: str,
    client: AdapterClient,
    desired: Mapping[str, DesiredAdapter],
    memory: PodMemory,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> PodResult:
    """One pass on one pod: read /v1/models, run the planned calls, and report what it lists afterwards.

    The returned states come from planning again against the post-action listing, so Ready means the pod
    lists the adapter with the desired digest now, not that a call returned 200.
    """
    try:
        before = await client.list_models()
    except (AdapterAPIError, aiohttp.ClientError, TimeoutError) as exc:
        return PodResult(pod=pod, reachable=False, error=_describe(exc), memory=memory)
    plan = plan_pod(desired, before, memory, max_attempts=max_attempts)
    if not plan.actions:
        return PodResult(pod=pod, reachable=True, served=before, states=plan.states, memory=memory)
    results = await client.apply_all(plan.actions)
    try:
        after = await client.list_models()
    except (AdapterAPIError, aiohttp.ClientError, TimeoutError) as exc:
        new_memory = record_results(memory, results, None)
        return PodResult(pod=pod, reachable=False, error=_describe(exc), results=results, memory=new_memory)
    new_memory = record_results(memory, results, after)
    final = plan_pod(desired, after, new_memory, max_attempts=max_attempts)
    return PodResult(
        pod=pod, reachable=True, served=after, results=results, states=final.states, memory=new_memory
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
