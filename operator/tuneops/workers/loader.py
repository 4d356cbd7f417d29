"""`tuneops worker adapter-loader`: the per-Pod adapter cache beside a vLLM server.

vLLM reads an adapter from a local folder (or an unpinned Hub name); it cannot read s3://, and its Hub resolver
ignores revisions. The loader runs in the serving Pod, next to vLLM, and puts such adapters into a folder both
containers share (an emptyDir; vLLM mounts it read-only):

- The operator sends the Pod's desired remote adapters with ``POST /v1/sync`` (each: name, URI, the digest a
  FineTunedModel or the spec recorded, and which Secret's variables read it), and which cache folders vLLM
  still serves from (``keep``). The answer is each adapter's state now: ``Fetching``, ``Ready`` with its path,
  or ``Failed`` with a reason and a message. Downloads run on one thread of their own, one at a time; a sync
  never waits for one.
- Every adapter lands in a folder named by its content digest (``<cache>/<sha256 hex>``): new weights are a new
  path, so vLLM's prefix cache (keyed by adapter name and path) can never mix versions, and two names for the
  same bytes share one copy. A download is checked before it is published: no links, files as its manifest
  lists them, and the recorded digest when there is one (anything else is ``DigestMismatch`` and is not kept).
- The cache is bounded (``--max-bytes``). A folder no desired adapter and no ``keep`` path names is deleted at
  the next sync: unloading an adapter frees its space. A download that would not fit beside the folders in use
  is refused (``CacheFull``), never published.
- A restarted loader finds the folders it published (the emptyDir outlives the container), hashes each again,
  and keeps only those whose content still has the digest their name says.

Only the operator should talk to it: with the server's API key set (``TUNEOPS_LOADER_API_KEY``, from the same
Secret as vLLM's) every request but ``/healthz`` must carry it; without one, the NetworkPolicy that fences vLLM's
runtime LoRA API fences this port too. It fetches only s3:// and hf:// (never a path of the Pod's own disk).
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneops.storage import InputError, credentials, remote
from tuneops.storage.artifacts import check_input
from tuneops.storage.integrity import DigestMismatchError
from tuneops.storage.manifest import digest_of, list_files
from tuneops.storage.uri import parse_uri

log = logging.getLogger("tuneops.workers.loader")

API_KEY_ENV = "TUNEOPS_LOADER_API_KEY"
DEFAULT_PORT = 8071
MAX_BODY = 1 << 20
MAX_ADAPTERS = 1024
# A failed download (not a digest mismatch: those wait for another digest or URI) is tried again after this
# ($TUNEOPS_LOADER_RETRY_S; a CacheFull too, once unloads may have made room).
RETRY_S = float(os.environ.get("TUNEOPS_LOADER_RETRY_S", "30"))
_DIGEST_DIR = re.compile(r"^[0-9a-f]{64}$")
STAGING_PREFIX = ".staging-"


class Want(BaseModel):
    """One desired adapter, as the operator sends it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=256)
    uri: str = Field(min_length=1, max_length=2048)
    digest: str = Field(default="", max_length=71, pattern=r"^(sha256:[0-9a-f]{64})?$")
    # the credential role of the adapter's Secret (TUNEOPS_<ROLE>_*), "" for none
    role: str = Field(default="", max_length=128, pattern=r"^[A-Za-z0-9_-]*$")


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    adapters: list[Want] = Field(default_factory=list, max_length=MAX_ADAPTERS)
    keep: list[str] = Field(default_factory=list, max_length=MAX_ADAPTERS)


@dataclass
class Entry:
    """One desired adapter's download and its outcome."""

    want: Want
    state: str = "Fetching"  # Fetching | Ready | Failed
    path: str = ""
    digest: str = ""
    size: int = 0
    reason: str = ""
    message: str = ""
    failed_at: float = 0.0
    queued: bool = False

    def key(self) -> tuple[str, str, str]:
        return (self.want.uri, self.want.digest, self.want.role)

    def wire(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "path": self.path,
            "digest": self.digest,
            "bytes": self.size,
            "reason": self.reason,
            "message": self.message,
        }


def _folder_size(root: Path) -> int:
    return sum((root / rel).stat().st_size for rel in list_files(root))


@dataclass
class Loader:
    """The cache and its bookkeeping; thread-safe (syncs come from HTTP threads, downloads from one worker)."""

    root: Path
    max_bytes: int
    entries: dict[str, Entry] = field(default_factory=dict)
    # published folders: digest hex -> bytes
    folders: dict[str, int] = field(default_factory=dict)
    keep: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    work: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._adopt()

    # ----- the cache on disk ------------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Keep the folders a previous run published whose content still has their name's digest."""
        for entry in sorted(self.root.iterdir()):
            if (
                entry.name.startswith(STAGING_PREFIX)
                or not _DIGEST_DIR.match(entry.name)
                or entry.is_symlink()
            ):
                _remove(entry)
                continue
            try:
                ok = entry.is_dir() and digest_of(entry) == f"sha256:{entry.name}"
            except (OSError, InputError):
                ok = False
            if ok:
                self.folders[entry.name] = _folder_size(entry)
                log.info(
                    "loader: kept %s from before (%d bytes, digest checked)",
                    entry.name,
                    self.folders[entry.name],
                )
            else:
                log.warning("loader: %s does not hold what its name says: removed", entry.name)
                _remove(entry)

    def used(self) -> int:
        return sum(self.folders.values())

    def _in_use(self) -> set[str]:
        """Folders a desired adapter or a kept path names (under self.lock)."""
        names = {Path(p).name for p in self.keep if Path(p).parent == self.root}
        names |= {e.digest.removeprefix("sha256:") for e in self.entries.values() if e.state == "Ready"}
        names |= {e.want.digest.removeprefix("sha256:") for e in self.entries.values() if e.want.digest}
        return names

    def _evict(self) -> list[Path]:
        """Forget every folder not in use (under self.lock); returns them, to delete outside the lock."""
        in_use = self._in_use()
        gone = [name for name in self.folders if name not in in_use]
        for name in gone:
            del self.folders[name]
        return [self.root / name for name in gone]

    # ----- the API ----------------------------------------------------------------------------------------

    def sync(self, request: SyncRequest) -> dict[str, Any]:
        now = time.monotonic()
        with self.lock:
            self.keep = set(request.keep)
            fresh: dict[str, Entry] = {}
            for want in request.adapters:
                old = self.entries.get(want.name)
                entry = (
                    old
                    if old is not None and old.key() == (want.uri, want.digest, want.role)
                    else Entry(want)
                )
                if entry.state == "Fetching" and not entry.queued:
                    self._adopt_known(entry)
                retry = (
                    entry.state == "Failed"
                    and entry.reason != "DigestMismatch"
                    and now - entry.failed_at > RETRY_S
                )
                if retry or (entry.state == "Fetching" and not entry.queued):
                    entry.state, entry.queued = "Fetching", True
                    self.work.put(want.name)
                fresh[want.name] = entry
            self.entries = fresh
            doomed = self._evict()
            answer = {
                "adapters": {name: e.wire() for name, e in fresh.items()},
                "cacheBytes": self.used(),
                "maxBytes": self.max_bytes,
            }
        for path in doomed:
            log.info("loader: %s is no longer desired or served: removed", path.name)
            _remove(path)
        return answer

    def _adopt_known(self, entry: Entry) -> None:
        """An adapter whose recorded digest names a folder already here is Ready without a download."""
        hexdigest = entry.want.digest.removeprefix("sha256:")
        if hexdigest and hexdigest in self.folders:
            self._ready(entry, hexdigest)

    def _ready(self, entry: Entry, hexdigest: str) -> None:
        entry.state, entry.queued = "Ready", False
        entry.path = str(self.root / hexdigest)
        entry.digest = f"sha256:{hexdigest}"
        entry.size = self.folders[hexdigest]
        entry.reason = entry.message = ""

    def _fail(self, entry: Entry, reason: str, message: str) -> None:
        entry.state, entry.queued = "Failed", False
        entry.reason, entry.message = reason, message[:1000]
        entry.failed_at = time.monotonic()

    # ----- downloads --------------------------------------------------------------------------------------

    def run_downloads(self) -> None:
        while True:
            name = self.work.get()
            if name is None:
                return
            with self.lock:
                entry = self.entries.get(name)
                if entry is None or entry.state != "Fetching":
                    continue
                want = entry.want
                roles = {e.want.uri: e.want.role for e in self.entries.values() if e.want.role}
            try:
                reason, message, hexdigest = self._download(want, roles)
            except Exception as exc:  # a bug on one adapter must not stop the others' downloads
                log.exception("loader: %s", want.uri)
                reason, message, hexdigest = "FetchFailed", f"{type(exc).__name__}: {exc}", ""
            with self.lock:
                current = self.entries.get(name)
                if current is not entry:
                    continue  # the spec moved on meanwhile; the next sync decides
                if hexdigest:
                    self._ready(entry, hexdigest)
                    log.info("loader: %s (%s) ready at %s", name, want.uri, entry.path)
                else:
                    self._fail(entry, reason, message)
                    log.warning("loader: %s (%s): %s: %s", name, want.uri, reason, message)

    def _download(self, want: Want, roles: dict[str, str]) -> tuple[str, str, str]:
        """Download, check and publish one adapter: ("", "", digest hex) or (reason, message, "")."""
        try:
            u = parse_uri(want.uri)
        except InputError as exc:
            return "InvalidURI", str(exc), ""
        if u.scheme not in ("s3", "hf"):
            return "InvalidURI", f"the adapter loader fetches s3:// and hf:// only, not {u.scheme}://", ""
        # Each source is read with its own Secret's variables only (storage.credentials); this thread is the
        # only one that reads them.
        os.environ[credentials.CREDENTIALS_ENV] = json.dumps(roles, sort_keys=True)
        staging = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            got = remote.s3_download(u, staging) if u.scheme == "s3" else remote.hf_download(u, staging)
            try:
                check_input(u, got, want.digest or None)
            except DigestMismatchError as exc:
                return "DigestMismatch", str(exc), ""
            if not (got / "adapter_config.json").is_file():
                return (
                    "NotAnAdapter",
                    f"{want.uri} holds no adapter_config.json: it is not a peft adapter",
                    "",
                )
            digest = digest_of(got)
            hexdigest = digest.removeprefix("sha256:")
            size = _folder_size(got)
            with self.lock:
                if hexdigest in self.folders:
                    return "", "", hexdigest
                doomed = self._evict()
                if self.used() + size > self.max_bytes:
                    return (
                        "CacheFull",
                        f"{want.uri} is {_mib(size)}, and the adapters in use already hold {_mib(self.used())} "
                        f"of the cache's {_mib(self.max_bytes)}: raise lora.cacheSize or serve fewer adapters "
                        "on this service",
                        "",
                    )
                os.replace(got, self.root / hexdigest)
                self.folders[hexdigest] = size
            for path in doomed:
                _remove(path)
            return "", "", hexdigest
        except InputError as exc:
            return "FetchFailed", str(exc), ""
        except OSError as exc:
            return "FetchFailed", f"{type(exc).__name__}: {exc}", ""
        finally:
            _remove(staging)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _handler(loader: Loader, api_key: str | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "tuneops-adapter-loader"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("loader http: " + format, *args)

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body, sort_keys=True).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if not api_key:
                return True
            got = self.headers.get("Authorization", "")
            return hmac.compare_digest(got.encode(), f"Bearer {api_key}".encode())

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(HTTPStatus.OK, {"status": "ok"})
            else:
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

        def do_POST(self) -> None:
            if self.path != "/v1/sync":
                self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            if not self._authorized():
                self._send(HTTPStatus.UNAUTHORIZED, {"error": "a valid API key is required"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": f"a body of 0 to {MAX_BODY} bytes"})
                return
            try:
                request = SyncRequest.model_validate_json(self.rfile.read(length) or b"{}")
            except ValidationError as exc:
                self._send(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": str(exc)[:2000]})
                return
            self._send(HTTPStatus.OK, loader.sync(request))

    return Handler


def serve(loader: Loader, host: str, port: int, api_key: str | None) -> ThreadingHTTPServer:
    """Starts the download thread and returns the HTTP server (not yet serving)."""
    threading.Thread(target=loader.run_downloads, name="adapter-downloads", daemon=True).start()
    server = ThreadingHTTPServer((host, port), _handler(loader, api_key))
    server.daemon_threads = True
    return server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", required=True, help="the folder shared with vLLM (an emptyDir)")
    p.add_argument("--max-bytes", type=int, required=True, help="the most the cache may hold")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--host", default="0.0.0.0")


def main(args: argparse.Namespace) -> int:
    loader = Loader(Path(args.cache), args.max_bytes)
    server = serve(loader, args.host, args.port, os.environ.get(API_KEY_ENV) or None)
    log.info("adapter loader on :%d, cache %s (max %s)", args.port, args.cache, _mib(args.max_bytes))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
