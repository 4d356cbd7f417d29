"""Starts the operator: config, feature discovery, kopf settings (one startup handler) and metrics."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from tuneops import labels, metrics
from tuneops.config import OperatorConfig
from tuneops.kube.client import Kube
from tuneops.reconcile import RECONCILERS
from tuneops.reconcile.base import Context

log = logging.getLogger(__name__)


class _TemporaryIsInfo(logging.Filter):
    """kopf logs a step still in progress ("failed temporarily") as an error; here it is the normal path."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


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


def build_registry(
    ctx: Context, resync_seconds: float, peering: str | None, standalone: bool
) -> kopf.OperatorRegistry:
    from tuneops import handlers

    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = labels.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="tuneops.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="tuneops.io", key="last-handled-configuration"
        )
        settings.posting.enabled = False  # our own Events say what happened, once per transition
        settings.peering.standalone = standalone
        settings.peering.name = peering or "tuneops"
        settings.peering.mandatory = False
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.networking.request_timeout = 60
        settings.batching.error_delays = [1, 2, 5, 10, 30, 60]

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In a Pod: the ServiceAccount token; elsewhere: KUBECONFIG. No client library involved.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(
            **kwargs
        ) or kopf.login_with_kubeconfig(**kwargs)
        return info

    handlers.register(registry, ctx, RECONCILERS, resync_seconds)
    return registry


def run_operator(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    config_path: str | None,
    liveness: str | None,
    metrics_port: int,
    standalone: bool,
    peering: str | None,
) -> int:
    logging.basicConfig(
        level=os.environ.get("TUNEOPS_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_TemporaryIsInfo())
    config = OperatorConfig.load(config_path)
    watch = [] if all_namespaces else (namespaces or config.namespaces)
    kube = Kube.from_environment()
    discover_features(kube, config)
    ctx = Context(kube=kube, config=config, poll_seconds=float(os.environ.get("TUNEOPS_POLL_SECONDS", "5")))
    resync = float(os.environ.get("TUNEOPS_RESYNC_SECONDS", "300"))
    registry = build_registry(ctx, resync, peering, standalone)
    metrics.serve(metrics_port)
    kopf.run(
        registry=registry,
        standalone=standalone,
        priority=0,
        peering_name=None if standalone else (peering or "tuneops"),
        namespaces=watch,
        clusterwide=not watch,
        liveness_endpoint=liveness or None,
    )
    return 0
