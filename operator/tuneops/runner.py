"""Starts the operator: config, feature discovery, kopf (its handlers watch the three tuneops kinds and feed the
control loop; it also logs in, serves liveness and handles signals) and metrics. See docs/design.md."""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import kopf

from tuneops import metrics
from tuneops.config import OperatorConfig
from tuneops.controller import Controller
from tuneops.kube import client as k
from tuneops.kube.client import Kube
from tuneops.reconcile import RECONCILERS

log = logging.getLogger(__name__)


def discover_features(kube: Kube, config: OperatorConfig) -> None:
    """Turn on fields the cluster's API server knows; a 1.20 server rejects podFailurePolicy under apply."""
    try:
        major, minor = kube.server_version()
    except Exception as exc:  # discovery is best effort; the conservative defaults stay
        log.warning("could not read the server version (%s); newer Job fields stay off", exc)
        return
    config.features.pod_failure_policy = (major, minor) >= (1, 26)
    config.features.pdb_v1 = (major, minor) >= (1, 21)
    config.features.hpa_v2 = (major, minor) >= (1, 23)
    config.features.native_sidecars = (major, minor) >= (1, 29)
    log.info("Kubernetes %d.%d: podFailurePolicy=%s", major, minor, config.features.pod_failure_policy)


def operator_settings() -> kopf.OperatorSettings:
    """kopf's settings. Its handlers only watch (event and index handlers): it keeps no state on the objects
    (annotations, finalizers: those come with change and daemon handlers, and there are none) and posts no
    Events (the operator's own say what happened, once per transition)."""
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    settings.scanning.disabled = True  # the three kinds are found once at start; no watch on every CRD
    # Watches end on the server's side every 5 minutes and continue from their resourceVersion, as the children's
    # informers do; a quiet watch is not taken for a dead one before that.
    settings.watching.server_timeout = WATCH_TIMEOUT_S
    settings.watching.inactivity_timeout = WATCH_TIMEOUT_S + 15
    return settings


WATCH_TIMEOUT_S = 300


def connection_info(kube: Kube) -> kopf.ConnectionInfo:
    """kopf's credentials, taken from the operator's own client (one login path: in-cluster config or
    KUBECONFIG, loaded once by the kubernetes package). Read again at each login, so a ServiceAccount token the
    kubernetes package refreshed reaches kopf when the server refuses the old one."""
    cfg = kube.api.configuration
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (
        (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    )
    return kopf.ConnectionInfo(
        server=str(cfg.host),
        ca_path=cfg.ssl_ca_cert or None,
        insecure=not cfg.verify_ssl,
        username=cfg.username or None,
        password=cfg.password or None,
        scheme=scheme,
        token=token,
        certificate_path=cfg.cert_file or None,
        private_key_path=cfg.key_file or None,
    )


def build_registry(
    controller: Controller, kube: Kube, elector: Any, done: threading.Event
) -> kopf.OperatorRegistry:
    """kopf's handlers: for each tuneops kind an index handler (fills the store during kopf's first listing) and
    an event handler (keeps it current and queues the resources); startup, cleanup, liveness and login."""
    registry = kopf.OperatorRegistry()
    for kind in controller.reconcilers:
        rtype = k.CUSTOM[kind]
        group, version = rtype.api_version.split("/")
        feed = _feeders(controller, kind)
        plural = rtype.plural
        kopf.index(group=group, version=version, plural=plural, registry=registry, id=f"store-{plural}")(
            feed[0]
        )
        kopf.on.event(group=group, version=version, plural=plural, registry=registry, id=f"queue-{plural}")(
            feed[1]
        )

    @kopf.on.startup(registry=registry)
    def start(**_: Any) -> None:
        def lead_then_run() -> None:
            if elector is not None:
                if not elector.acquire(done):
                    return
                elector.keep(done, on_lost=lambda: _lost(done))
            controller.start()

        threading.Thread(target=lead_then_run, name="controller", daemon=True).start()

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        done.set()  # releases kopf's own wait on the stop flag (a thread), so the process exits at once
        controller.stop()
        if elector is not None:
            elector.release()

    @kopf.on.probe(registry=registry, id="controller")
    def probe(**_: Any) -> dict[str, Any]:
        return controller.health()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(kube)

    return registry


def _feeders(
    controller: Controller, kind: str
) -> tuple[Callable[..., Awaitable[None]], Callable[..., Awaitable[None]]]:
    """The index and event handlers of one kind. Coroutines, so kopf runs them on its loop (no thread hop) one
    after another; each is a store update and a queue add. They return None: a value would be written to the
    object's status by kopf."""

    async def store(body: kopf.Body, **_: Any) -> None:
        controller.listed(kind, dict(body))

    async def queue(event: kopf.RawEvent, **_: Any) -> None:
        controller.event(kind, event.get("type"), dict(event["object"]))

    store.__name__, queue.__name__ = f"store_{kind}", f"queue_{kind}"
    return store, queue


def _lost(done: threading.Event) -> None:
    """Another instance may act from now on: stop at once (the Deployment starts this one again)."""
    log.error("lost the leader Lease; stopping")
    LOST.set()
    done.set()


LOST = threading.Event()


def retry_missing_routes() -> None:
    """Makes kopf retry a watch answered 404 instead of stopping the operator.

    After an API server restart its custom resources' routes come back a moment after it answers: a watch kopf
    reconnects in that moment gets 404, which kopf takes as fatal (its reactor stops, and the operator with it).
    Such a 404 is handled as kopf handles 429 on a watch: logged, then the watch is made again after
    `settings.watching.reconnect_backoff`. A CRD that is really gone is retried the same way (its resources are
    gone too, so there is nothing to reconcile). Idempotent; `tests/unit/test_runner_watch_retry.py` fails if
    kopf's watch loop changes shape."""
    from kopf._cogs.clients import errors, watching

    original = watching.continuous_watch
    if getattr(original, "_tuneops_retries_404", False):
        return

    async def continuous_watch(**kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for event in original(**kwargs):
                yield event
        except errors.APINotFoundError as exc:
            log.warning("watch of %s answered 404 (%s): watching again shortly", kwargs.get("resource"), exc)
            raise errors.APITooManyRequestsError("404 on a watch: retried", status=429, headers={}) from exc

    continuous_watch._tuneops_retries_404 = True  # type: ignore[attr-defined]
    watching.continuous_watch = continuous_watch


def run_operator(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    config_path: str | None,
    liveness: str | None,
    metrics_port: int,
    leader_election: bool = False,
    lease_namespace: str = "default",
    lease_name: str = "tuneops",
) -> int:
    level = os.environ.get("TUNEOPS_LOG_LEVEL", "INFO")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level.upper() != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not "Handler ... succeeded" per event
    config = OperatorConfig.load(config_path)
    watch = [] if all_namespaces else (namespaces or config.namespaces)
    kube = Kube.from_environment()
    discover_features(kube, config)
    controller = Controller(
        kube,
        config,
        RECONCILERS,
        namespaces=watch,
        resync_s=float(os.environ.get("TUNEOPS_RESYNC_SECONDS", "300")),
        poll_s=float(os.environ.get("TUNEOPS_POLL_SECONDS", "30")),
        workers=int(os.environ.get("TUNEOPS_WORKERS", "8")),
    )
    elector = None
    if leader_election:
        from tuneops.leader import LeaderElector

        identity = f"{socket.gethostname()}-{os.getpid()}"
        elector = LeaderElector(kube, lease_namespace, lease_name, identity)
    done = threading.Event()
    registry = build_registry(controller, kube, elector, done)
    metrics.serve(metrics_port)
    retry_missing_routes()
    kopf.run(
        registry=registry,
        settings=operator_settings(),
        standalone=True,  # no kopf peering: one active instance is the Lease's business (leader.py)
        clusterwide=not watch,
        namespaces=watch,
        liveness_endpoint=liveness or None,
        stop_flag=done,
    )
    controller.stop()
    return 1 if LOST.is_set() else 0
