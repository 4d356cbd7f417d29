"""Starts the operator: config, feature discovery, kopf settings (one startup handler) and metrics."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

import kopf

from tuneops import metrics
from tuneops.config import OperatorConfig
from tuneops.controller import Controller
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
    log.info("Kubernetes %d.%d: podFailurePolicy=%s", major, minor, config.features.pod_failure_policy)


def build_registry(controller: Controller, elector: Any, done: threading.Event) -> kopf.OperatorRegistry:
    """kopf runs the process: logging in, the liveness endpoint, signals. The control loop is our own (see
    controller.py); kopf watches nothing itself."""
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # our own Events say what happened, once per transition
        settings.scanning.disabled = True  # no resource handlers: no API discovery either
        settings.peering.standalone = True  # one active instance is the Lease's business (leader election)
        settings.networking.request_timeout = 60

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
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a Pod: the ServiceAccount token; elsewhere: KUBECONFIG. No client library involved.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    return registry


def _lost(done: threading.Event) -> None:
    """Another instance may act from now on: stop at once (the Deployment starts this one again)."""
    log.error("lost the leader Lease; stopping")
    LOST.set()
    done.set()


LOST = threading.Event()


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
    logging.basicConfig(
        level=os.environ.get("TUNEOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    registry = build_registry(controller, elector, done)
    metrics.serve(metrics_port)
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=True,
        liveness_endpoint=liveness or None,
        stop_flag=done,
    )
    controller.stop()
    return 1 if LOST.is_set() else 0
