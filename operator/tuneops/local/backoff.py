"""The kubelet's retry bookkeeping for one container: crash-loop back-off and image-pull back-off."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from tuneops import backoff
from tuneops.local.container import Container, go_duration
from tuneops.local.runtimes import Runtime, find_runtime

if TYPE_CHECKING:
    from tuneops.local.node import NodeConfig

Obj = dict[str, Any]
# (type, reason, message) of an Event the caller records on the Pod
Event = tuple[str, str, str]

# A container that ran this long without failing starts its next crash loop from the base back-off.
BACKOFF_RESET_S = 600.0


def restarts(policy: str, exit_code: int) -> bool:
    """Whether the Pod's restartPolicy restarts a container that exited with ``exit_code``."""
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def crash_back_off(c: Container, term: Obj, ran: float, cfg: NodeConfig, pod_ref: str) -> Event | None:
    """The kubelet's crash back-off: the first restart is immediate, then 10 s, 20 s, ... up to 5 min;
    a container that ran long enough starts over. Returns the BackOff Event when the restart waits."""
    if ran > BACKOFF_RESET_S:
        c.backoff_streak = 0
    # The kubelet's own timing has no jitter.
    delay = (
        0.0
        if c.backoff_streak == 0
        else backoff.delay(c.backoff_streak - 1, cfg.backoff_base_s, cfg.backoff_max_s, spread=0.0)
    )
    c.backoff_streak += 1
    c.last_state = {"terminated": term}
    c.restart_count += 1
    c.next_start = time.monotonic() + delay
    if delay <= 0:
        return None
    message = f"back-off {go_duration(delay)} restarting failed container={c.name} pod={pod_ref}"
    c.state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
    return ("Warning", "BackOff", f"Back-off restarting failed container {c.name} in pod {pod_ref}")


def pull(c: Container, cfg: NodeConfig) -> tuple[Runtime | None, list[Event]]:
    """The container's runtime, found as the kubelet pulls an image: an image the mapping lacks fails
    with ErrImagePull, then waits in ImagePullBackOff, and is tried again with the crash back-off's timing."""
    image = str(c.spec.get("image") or "")
    runtime = find_runtime(cfg.runtimes, image)
    if runtime is not None:
        c.pull_failures = 0
        return runtime, []
    return None, pull_failed(c, cfg, image, "the local node's image mapping has no runtime for this image")


def pull_failed(c: Container, cfg: NodeConfig, image: str, why: str) -> list[Event]:
    """An image that is not there: ErrImagePull, then ImagePullBackOff until the next try."""
    now = time.monotonic()
    if now < c.pull_retry_at:
        message = f'Back-off pulling image "{image}"'
        c.state = {"waiting": {"reason": "ImagePullBackOff", "message": message}}
        c.next_start = c.pull_retry_at
        return [("Normal", "BackOff", message), ("Warning", "Failed", "Error: ImagePullBackOff")]
    error = f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": {why}'
    delay = backoff.delay(c.pull_failures, cfg.backoff_base_s, cfg.backoff_max_s, spread=0.0)
    c.pull_failures += 1
    c.pull_retry_at = now + delay
    # The kubelet shows ErrImagePull until its next sync of the Pod, then ImagePullBackOff until the retry.
    c.next_start = now + delay / 2
    c.state = {"waiting": {"reason": "ErrImagePull", "message": error}}
    return [
        ("Normal", "Pulling", f'Pulling image "{image}"'),
        ("Warning", "Failed", f'Failed to pull image "{image}": {error}'),
        ("Warning", "Failed", "Error: ErrImagePull"),
    ]
