"""Executes planned LoRA changes against one vLLM server's runtime API and reads back what it serves.

The server is a tenant's Pod, so nothing it answers is trusted: bodies are read up to a cap, redirects are
never followed, every call ends by a deadline shared by the whole pass, and whatever reaches status is a short
printable excerpt.
"""

from __future__ import annotations

import asyncio
import ipaddress
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
from tuneops.serving.errors import restore_paths

# A model list of the largest fleet of adapters a server holds fits in far less; anything bigger is refused.
MODELS_BODY_MAX = 1 << 20
# Load and unload answers are read only for their error message.
ACTION_BODY_MAX = 16 << 10
LIST_TIMEOUT_S = 10.0
UNLOAD_TIMEOUT_S = 15.0
# adapters are read from disk (or a network volume) inside the request
LOAD_TIMEOUT_S = 60.0
# One pass over all Pods of a service holds one of the operator's handler threads for at most this long.
PASS_DEADLINE_S = 60.0
# Calls per Pod per pass; what is left is planned again on the next pass.
MAX_ACTIONS_PER_POD = 16
EXCERPT_MAX = 200


def excerpt(text: str, limit: int = EXCERPT_MAX) -> str:
    """A short, single-line, printable version of text a server (or anyone) sent, safe to put in status."""
    head = text[: limit * 4]
    clean = " ".join("".join(ch if ch.isprintable() else " " for ch in head).split())
    if len(clean) > limit or len(text) > len(head):
        return clean[: limit - 1] + "…"
    return clean


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
    return excerpt(message) or f"HTTP {status}"


def api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be sent as a bearer token (None: it can).

    vLLM compares the header with its key byte for byte, so a key with a trailing newline (``echo`` into a
    Secret) can never be matched by any client: it is reported, not stripped.
    """
    if not key:
        return "the API key is empty"
    if key != key.strip():
        return "the API key starts or ends with whitespace (a trailing newline?): no client can send it"
    if not all("!" <= ch <= "~" for ch in key):
        return "the API key holds characters other than printable ASCII: no client can send it in a header"
    return None


def pod_url(ip: str, port: int) -> str:
    """The base URL of a Pod's server, from its IP only: never a host name, so no lookup can redirect it."""
    address = ipaddress.ip_address(ip)
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}:{int(port)}"


class Deadline:
    """The end of one pass: every call is bounded by what is left of it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())


class AdapterAPIError(Exception):
    """The server answered a read with an error (or something that is not a model list)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message


class _TooLarge(Exception):
    pass


async def _read_capped(response: aiohttp.ClientResponse, cap: int, *, truncate: bool) -> bytes:
    """At most ``cap`` bytes of the body; beyond that the rest is dropped (truncate) or the read fails."""
    if response.content_length is not None and response.content_length > cap and not truncate:
        raise _TooLarge(f"body of {response.content_length} bytes is over the {cap}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while size <= cap:
        chunk = await response.content.read(min(64 << 10, cap + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > cap:
        if not truncate:
            raise _TooLarge(f"body is over the {cap}-byte limit")
        return b"".join(chunks)[:cap]
    return b"".join(chunks)


def _encoding_problem(response: aiohttp.ClientResponse) -> str | None:
    # bodies are never decompressed: a small gzip body can expand past any cap
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    return None if encoding in ("", "identity") else f"compressed body ({excerpt(encoding, 40)}) refused"


class AdapterClient:
    """A thin client for one server: GET /v1/models, POST /v1/load_lora_adapter, /v1/unload_lora_adapter.

    Use it as an async context manager, or pass a shared ``aiohttp.ClientSession`` (not closed here). A shared
    session should be made with ``auto_decompress=False``; redirects are refused either way.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = LIST_TIMEOUT_S,
        unload_timeout_s: float = UNLOAD_TIMEOUT_S,
        load_timeout_s: float = LOAD_TIMEOUT_S,
        deadline: Deadline | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if api_key is not None:
            problem = api_key_problem(api_key)
            if problem:
                raise ValueError(problem)
        self.base_url = base_url.rstrip("/")
        self._headers = {"Accept-Encoding": "identity"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self._unload_timeout_s = unload_timeout_s
        self._load_timeout_s = load_timeout_s
        self.deadline = deadline or Deadline(PASS_DEADLINE_S)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AdapterClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False,
                trust_env=False,  # no proxy from the environment: the Pod IP is the only peer
                connector=aiohttp.TCPConnector(limit=2, force_close=True),
            )
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

    def _budget(self, per_call: float) -> float:
        left = min(per_call, self.deadline.remaining())
        if left <= 0:
            raise TimeoutError("the pass deadline is spent")
        return left

    async def _call(
        self,
        method: str,
        path: str,
        cap: int,
        per_call: float,
        payload: dict[str, Any] | None = None,
        *,
        whole: bool = False,
    ) -> tuple[int, str]:
        """(status, body text) of one request, with the body capped and no redirect followed. With ``whole``
        a successful answer over the cap is an error; otherwise (and for error answers) it is cut at the cap."""
        seconds = self._budget(per_call)
        try:
            # the client's own total timeout covers the body too; this one also bounds what it may miss
            async with (
                asyncio.timeout(seconds + 1.0),
                self._http().request(
                    method,
                    f"{self.base_url}{path}",
                    json=payload,
                    headers=self._headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=seconds),
                ) as response,
            ):
                if 300 <= response.status < 400:
                    raise AdapterAPIError(response.status, "redirect refused: only the Pod itself is asked")
                problem = _encoding_problem(response)
                if problem:
                    raise AdapterAPIError(response.status, problem)
                ok = 200 <= response.status < 300
                try:
                    body = await _read_capped(response, cap, truncate=not (ok and whole))
                except _TooLarge as exc:
                    raise AdapterAPIError(response.status, str(exc)) from None
                return response.status, body.decode("utf-8", errors="replace")
        except aiohttp.ClientResponseError as exc:
            raise AdapterAPIError(exc.status, excerpt(exc.message)) from None

    async def list_models(self) -> ServedModels:
        status, text = await self._call("GET", "/v1/models", MODELS_BODY_MAX, self.timeout_s, whole=True)
        if status != 200:
            raise AdapterAPIError(status, error_message(status, text))
        try:
            body = json.loads(text)
        except ValueError:
            raise AdapterAPIError(status, f"/v1/models is not JSON: {excerpt(text, 80)!r}") from None
        if not isinstance(body, Mapping):
            raise AdapterAPIError(200, "/v1/models did not return an object")
        try:
            return ServedModels.from_openai_models(body)
        except ValueError as exc:
            raise AdapterAPIError(200, excerpt(str(exc))) from None

    async def _post(self, action: AdapterAction, path: str, payload: dict[str, Any]) -> ActionResult:
        per_call = self._unload_timeout_s if action.kind is ActionKind.UNLOAD else self._load_timeout_s
        start = time.monotonic()
        try:
            status, text = await self._call("POST", path, ACTION_BODY_MAX, per_call, payload)
        except AdapterAPIError as exc:
            return ActionResult(
                action=action,
                ok=False,
                status=exc.status,
                message=restore_paths(exc.message, action.path),
                seconds=time.monotonic() - start,
            )
        except (aiohttp.ClientError, TimeoutError, UnicodeError, ValueError) as exc:
            return ActionResult(
                action=action, ok=False, message=describe(exc), seconds=time.monotonic() - start
            )
        ok = 200 <= status < 300
        return ActionResult(
            action=action,
            ok=ok,
            status=status,
            # vLLM writes `<path>` for the adapter's path in its errors; the request named it, so say it.
            message="" if ok else restore_paths(error_message(status, text), action.path),
            seconds=time.monotonic() - start,
        )

    async def apply(self, action: AdapterAction) -> ActionResult:
        if action.kind is ActionKind.UNLOAD:
            return await self._post(action, "/v1/unload_lora_adapter", {"lora_name": action.name})
        if action.kind is ActionKind.RELOAD:
            # Unload, then load: vLLM's `load_inplace` stays set on the request it stores, and its worker then
            # reads the adapter from disk again at every step of every request that uses it (vllm#41482). The
            # load gets a fresh adapter id and the new (content-addressed) path, which is part of vLLM's
            # prefix-cache key, so no block computed with the old weights is reused (vllm#42125). Between the
            # two calls the name is not served (a request gets 404 for the time of one load). An unload answered
            # 404 (already gone) is fine; any other failure stops here, with the old weights still served.
            gone = await self._post(action, "/v1/unload_lora_adapter", {"lora_name": action.name})
            if not gone.ok and gone.status != 404:
                return gone
        payload: dict[str, Any] = {"lora_name": action.name, "lora_path": action.path}
        return await self._post(action, "/v1/load_lora_adapter", payload)

    async def apply_all(self, actions: Sequence[AdapterAction]) -> tuple[ActionResult, ...]:
        """In plan order (unloads first, to free slots; the server loads one at a time anyway). Stops while the
        pass still has time for the listing that reads back the outcome."""
        reserve = min(self.timeout_s, 5.0, self.deadline.seconds / 4)
        results: list[ActionResult] = []
        for action in actions:
            if self.deadline.remaining() <= reserve:
                break
            results.append(await self.apply(action))
        return tuple(results)


# What a broken, slow or hostile server can make a call raise; anything else is a bug and propagates.
POD_ERRORS: tuple[type[BaseException], ...] = (
    AdapterAPIError,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    UnicodeError,
    ValueError,
)


async def reconcile_pod(
    pod: str,
    client: AdapterClient,
    desired: Mapping[str, DesiredAdapter],
    memory: PodMemory,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    max_actions: int = MAX_ACTIONS_PER_POD,
) -> PodResult:
    """One pass on one pod: read /v1/models, run up to ``max_actions`` planned calls, and report what it lists
    afterwards.

    The returned states come from planning again against the post-action listing, so Ready means the pod
    lists the adapter loaded from the desired (digest-carrying) path now, not that a call returned 200.
    """
    try:
        before = await client.list_models()
    except POD_ERRORS as exc:
        return PodResult(pod=pod, reachable=False, error=describe(exc), memory=memory)
    plan = plan_pod(desired, before, memory, max_attempts=max_attempts)
    if not plan.actions:
        return PodResult(pod=pod, reachable=True, served=before, states=plan.states, memory=memory)
    results = await client.apply_all(plan.actions[:max_actions])
    try:
        after = await client.list_models()
    except POD_ERRORS as exc:
        new_memory = record_results(memory, results, None)
        return PodResult(pod=pod, reachable=False, error=describe(exc), results=results, memory=new_memory)
    new_memory = record_results(memory, results, after)
    final = plan_pod(desired, after, new_memory, max_attempts=max_attempts)
    return PodResult(
        pod=pod, reachable=True, served=after, results=results, states=final.states, memory=new_memory
    )


def describe(exc: BaseException) -> str:
    """A short printable account of an error, for status."""
    text = str(exc)
    return excerpt(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
