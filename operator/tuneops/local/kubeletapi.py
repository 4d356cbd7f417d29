"""The part of a kubelet's HTTPS API that `kubectl logs` needs: `/containerLogs/{ns}/{pod}/{container}`.

The API server serves `pods/log` by dialing the Pod's Node (its InternalIP, at the port in
`status.daemonEndpoints.kubeletEndpoint`) and streaming what the kubelet answers. The local node runs this
server on its own threads, on loopback only, with a self-signed serving certificate (the API server is not
told a kubelet CA, so it does not check it) kept under `<node root>/kubelet/`. When the node's kubeconfig names
a CA, a caller must present a client certificate that CA signed for the API server's kubelet-client identity
(`--kubelet-client-certificate`); anyone else gets no TLS session or a 403.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import logging
import os
import re
import select
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from tuneops.local.node import LocalNode

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# Subjects allowed to read logs: the control plane's kubelet client certificate, or any cluster admin.
ALLOWED_USERS = frozenset({"kube-apiserver-kubelet-client"})
ALLOWED_GROUPS = frozenset({"system:masters"})
FOLLOW_POLL_S = 0.2
CHUNK = 64 * 1024


class KubeletApiError(Exception):
    """An answer other than 200, with the kubelet's status code and plain-text message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----- the serving certificate ------------------------------------------------------------------------


def serving_certificate(folder: Path, host: str, name: str) -> tuple[Path, Path]:
    """A self-signed certificate and key for `host` (an IP) and `name`, made once in `folder` and then kept."""
    cert, key = folder / "kubelet.crt", folder / "kubelet.key"
    if cert.is_file() and key.is_file():
        return cert, key
    folder.mkdir(parents=True, exist_ok=True)
    try:
        pem_cert, pem_key = _self_signed_cryptography(host, name)
    except ImportError:
        pem_cert, pem_key = _self_signed_openssl(folder, host, name)
    tmp_key = key.with_suffix(".tmp")
    tmp_key.write_bytes(pem_key)
    tmp_key.chmod(0o600)
    tmp_key.replace(key)
    cert.write_bytes(pem_cert)
    return cert, key


def _self_signed_cryptography(host: str, name: str) -> tuple[bytes, bytes]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}@tuneops-local")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName(name)]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key


def _self_signed_openssl(folder: Path, host: str, name: str) -> tuple[bytes, bytes]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the local node's kubelet API needs the `cryptography` package or openssl")
    work = folder / "openssl.tmp"
    work.mkdir(exist_ok=True)
    try:
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "k.pem", "-out", "c.pem",
             "-days", "3650", "-subj", f"/CN={name}@tuneops-local",
             "-addext", f"subjectAltName=IP:{host},DNS:{name}", "-addext", "extendedKeyUsage=serverAuth"],
            cwd=work, capture_output=True, check=True,
        )  # fmt: skip
        return (work / "c.pem").read_bytes(), (work / "k.pem").read_bytes()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----- the log files ----------------------------------------------------------------------------------


@dataclass
class LogRequest:
    """The query of a `/containerLogs` request, as the API server sends it."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None
    since: float | None = None  # epoch seconds

    @classmethod
    def parse(cls, query: str) -> LogRequest:
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(query, keep_blank_values=True).items()}

        def flag(name: str) -> bool:
            return name in q and q[name].lower() in ("true", "1", "")

        def number(name: str) -> int | None:
            if name not in q:
                return None
            try:
                value = int(q[name])
            except ValueError:
                raise KubeletApiError(400, f"invalid {name}: {q[name]!r}") from None
            if value < 0:
                raise KubeletApiError(400, f"{name} must be 0 or more")
            return value

        since: float | None = None
        seconds = number("sinceSeconds")
        if seconds is not None:
            since = time.time() - seconds
        elif q.get("sinceTime"):
            try:
                since = dt.datetime.fromisoformat(q["sinceTime"].replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise KubeletApiError(400, f"invalid sinceTime: {q['sinceTime']!r}") from None
        return cls(
            follow=flag("follow"),
            previous=flag("previous"),
            timestamps=flag("timestamps"),
            tail_lines=number("tailLines"),
            limit_bytes=number("limitBytes"),
            since=since,
        )


def _runs(folder: Path) -> list[int]:
    """The restart numbers that have a log file in `folder`, in order."""
    found = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            if entry.suffix == ".log" and entry.stem.isdigit():
                found.append(int(entry.stem))
    return sorted(found)


def _tail(f: BinaryIO, lines: int) -> int:
    """The offset where the last `lines` lines of the open file begin."""
    end = f.seek(0, os.SEEK_END)
    if lines == 0:
        return end
    pos, found = end, 0
    # A final line without its newline counts as a line; its own newline is not a separator.
    f.seek(max(0, end - 1))
    if end and f.read(1) == b"\n":
        pos -= 1
    while pos > 0:
        start = max(0, pos - CHUNK)
        f.seek(start)
        block = f.read(pos - start)
        idx = len(block)
        while True:
            idx = block.rfind(b"\n", 0, idx)
            if idx < 0:
                break
            found += 1
            if found == lines:
                return start + idx + 1
        pos = start
    return 0


def _stamp(when: float) -> bytes:
    text = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z "
    return text.encode()


class LogFiles:
    """Finds a container's log file on the node and says whether its process may still write to it."""

    def __init__(self, node: LocalNode) -> None:
        self.node = node

    def locate(self, namespace: str, pod_name: str, container: str, previous: bool) -> tuple[Path, str]:
        """The log file to serve and the Pod's uid; a KubeletApiError with the kubelet's words otherwise."""
        pod = self.node.pods.get(namespace, pod_name)
        spec = (pod or {}).get("spec") or {}
        if pod is None or spec.get("nodeName") != self.node.config.name:
            raise KubeletApiError(404, f'pod "{pod_name}" does not exist')
        names = [
            str(c.get("name")) for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])
        ]
        if container not in names:
            raise KubeletApiError(404, f'container "{container}" not found in pod "{pod_name}"')
        uid = str(pod["metadata"]["uid"])
        folder = self.node.config.root / "pods" / f"{namespace}_{pod_name}_{uid[:8]}" / "logs" / container
        runs = _runs(folder)
        if previous:
            if len(runs) < 2:
                raise KubeletApiError(
                    400, f'previous terminated container "{container}" in pod "{pod_name}" not found'
                )
            return folder / f"{runs[-2]}.log", uid
        if not runs:
            reason = _waiting_reason(pod, container) or "ContainerCreating"
            if reason in ("ErrImagePull", "ImagePullBackOff"):
                reason = "trying and failing to pull image"
            raise KubeletApiError(
                400, f'container "{container}" in pod "{pod_name}" is waiting to start: {reason}'
            )
        return folder / f"{runs[-1]}.log", uid

    def writing(self, namespace: str, pod_name: str, uid: str, container: str, path: Path) -> bool:
        """Whether a running process of this container still writes `path` (follow goes on while it does)."""
        worker = self.node.worker(namespace, pod_name)
        if worker is None or worker.uid != uid or worker.finished.is_set():
            return False
        for c in worker.init_containers + worker.containers:
            if c.name == container:
                return c.running() and path.name == f"{c.restart_count}.log"
        return False


def _waiting_reason(pod: Obj, container: str) -> str:
    status = pod.get("status") or {}
    for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if s.get("name") == container:
            return str(((s.get("state") or {}).get("waiting") or {}).get("reason") or "")
    return ""


def stream_log(
    f: BinaryIO,
    req: LogRequest,
    still_writing: Callable[[], bool],
    client_gone: Callable[[float], bool],
    stopping: threading.Event,
) -> Generator[bytes]:
    """The bytes to send for one log file: tail, since and limit applied; with follow, new lines until the
    container's process ends, the client goes or the node stops.

    The files hold what the process printed and no per-line times: `timestamps` stamps the lines already written
    with the file's last-modified time (an upper bound) and streamed lines with the time they are read, and
    `since` skips the lines already written only when the file was last written before it.
    """
    with f:
        st = os.fstat(f.fileno())
        start = 0
        if req.since is not None and st.st_mtime < req.since:
            start = st.st_size
        elif req.tail_lines is not None:
            start = _tail(f, req.tail_lines)
        f.seek(start)
        budget = req.limit_bytes
        pending = b""  # a line not yet ended: with timestamps, it is stamped when it is complete
        existing_until = st.st_size
        while True:
            data = f.read(CHUNK)
            if data:
                if req.timestamps:
                    pos = f.tell()
                    when = st.st_mtime if pos <= existing_until else time.time()
                    pending += data
                    cut = pending.rfind(b"\n") + 1
                    data, pending = pending[:cut], pending[cut:]
                    data = b"".join(_stamp(when) + line for line in data.splitlines(keepends=True))
                if budget is not None:
                    data = data[:budget]
                    budget -= len(data)
                if data:
                    yield data
                if budget == 0:
                    return
                continue
            # At the end of what is written so far.
            if not req.follow or stopping.is_set() or not still_writing():
                # One last read: the process may have written more just before it ended.
                rest = pending + f.read()
                if rest and req.timestamps:
                    rest = _stamp(time.time()) + rest
                if rest:
                    yield rest if budget is None else rest[:budget]
                return
            if client_gone(FOLLOW_POLL_S):
                return


# ----- the HTTPS server -------------------------------------------------------------------------------

_LOG_PATH = re.compile(r"^/containerLogs/([^/]+)/([^/]+)/([^/]+)/?$")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # the body ends when the connection closes: right for a stream
    server_version = "tuneops-local-kubelet"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("kubelet api %s: " + format, self.address_string(), *args)

    def _answer(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _allowed(self) -> bool:
        if not self.server.verify_clients:
            return True
        cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject: Any = (cert or {}).get("subject", ())
        pairs = [(str(k), str(v)) for rdn in subject for k, v in rdn]
        user = next((v for k, v in pairs if k == "commonName"), "")
        groups = {v for k, v in pairs if k == "organizationName"}
        if user in ALLOWED_USERS or groups & ALLOWED_GROUPS:
            return True
        self._answer(403, f"Forbidden (user={user}, verb=get, resource=nodes, subresource=proxy)")
        return False

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if not self._allowed():
            return
        if url.path in ("/healthz", "/healthz/"):
            self._answer(200, "ok")
            return
        match = _LOG_PATH.match(url.path)
        if match is None:
            what = url.path.strip("/").split("/")[0] or "/"
            self._answer(
                404 if what not in ("exec", "attach", "portForward", "run") else 501,
                f"{what}: the tuneops local node serves only container logs (/containerLogs); "
                "its Pods are local processes (see docs/local.md)",
            )
            return
        namespace, pod, container = (urllib.parse.unquote(p) for p in match.groups())
        files = self.server.files
        try:
            req = LogRequest.parse(url.query)
            path, uid = files.locate(namespace, pod, container, req.previous)
            log_file = path.open("rb")
        except KubeletApiError as err:
            self._answer(err.status, err.message)
            return
        except OSError:
            self._answer(404, f'container "{container}" in pod "{pod}": its log file is gone')
            return
        chunks = stream_log(
            log_file,
            req,
            lambda: files.writing(namespace, pod, uid, container, path),
            self._client_gone,
            self.server.stopping,
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.server.streams.acquire()
        try:
            for data in chunks:
                self.wfile.write(data)
        except (OSError, ssl.SSLError):
            pass  # the client went away
        finally:
            chunks.close()
            self.server.streams.release()

    do_POST = do_GET  # `kubectl exec`/`attach`/`port-forward` arrive as POSTs: answered with the 501 above

    def _client_gone(self, wait: float) -> bool:
        """Wait up to `wait` seconds; True when the client closed its side of the connection."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], wait)
            if not readable:
                return False
            peek = sock.recv(1) if isinstance(sock, ssl.SSLSocket) else sock.recv(1, socket.MSG_PEEK)
            return not peek
        except (OSError, ssl.SSLError, ValueError):
            return True


class _Counter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def acquire(self) -> None:
        with self._lock:
            self.value += 1

    def release(self) -> None:
        with self._lock:
            self.value -= 1


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, files: LogFiles, verify: bool
    ) -> None:
        super().__init__(address, _Handler)
        self.context = context
        self.files = files
        self.verify_clients = verify
        self.stopping = threading.Event()
        self.streams = _Counter()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs on the request's own thread, so a slow client holds up no one else.
        request.settimeout(30.0)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as err:
            log.debug("kubelet api: TLS handshake with %s failed: %s", client_address, err)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


class KubeletServer:
    """The node's kubelet API on `host`: an ephemeral port, registered in the Node's daemonEndpoints."""

    def __init__(self, node: LocalNode, host: str, ca_file: str | None) -> None:
        cert, key = serving_certificate(node.config.root / "kubelet", host, node.config.name)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        verify = bool(ca_file) and Path(str(ca_file)).is_file()
        if verify:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(ca_file))
        self.server = _Server((host, 0), context, LogFiles(node), verify)
        self.host = host
        self.port = int(self.server.server_address[1])
        self.verifies_clients = verify
        self._thread = threading.Thread(target=self.server.serve_forever, name="kubelet-api", daemon=True)

    @property
    def active_streams(self) -> int:
        """Log responses being sent now (a follow holds one until its container ends or its client goes)."""
        return self.server.streams.value

    def start(self) -> None:
        self._thread.start()
        log.info(
            "kubelet API on https://%s:%d (%s)", self.host, self.port,
            "client certificates required" if self.verifies_clients else "loopback only, no client auth",
        )  # fmt: skip

    def stop(self) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
