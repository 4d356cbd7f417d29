"""Why a workload's Pods do not run, read the way kubelet, the scheduler and the controllers report it: one table
of causes ordered by severity (pure), shared by Job steps and serving, plus the one extra read it needs (Events)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneops.adapters.gate import condition as pod_condition
from tuneops.api.conditions import TERMINAL_REASONS, Reason
from tuneops.kube import client as k
from tuneops.serving.errors import model_path_missing, root_cause

log = logging.getLogger(__name__)

# Messages in status stay short enough for `kubectl get` and Argo CD's health message.
LIMIT = 300

# The causes, most severe first: when several Pods are stuck differently, status names the worst one.
SEVERITY: tuple[str, ...] = (
    Reason.OOM_KILLED,
    Reason.CRASH_LOOP_BACK_OFF,
    Reason.DIGEST_MISMATCH,
    Reason.INIT_CONTAINER_FAILED,
    Reason.CREATE_CONTAINER_CONFIG_ERROR,
    Reason.IMAGE_PULL_BACK_OFF,
    Reason.VOLUME_MOUNT_FAILED,
    Reason.CLAIM_PENDING,
    Reason.UNSCHEDULABLE,
)

# kubelet's waiting reasons (what `kubectl get pod` shows as STATUS) -> ours.
IMAGE_PULL = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG = frozenset({"CreateContainerConfigError"})
CRASHING = frozenset({"CrashLoopBackOff", "RunContainerError", "CreateContainerError"})

# Events that explain a Pod kubelet has not started (volumes) or the scheduler has not placed.
MOUNT_EVENTS = frozenset({"FailedMount", "FailedAttachVolume"})
SCHEDULING_EVENTS = frozenset({"FailedScheduling"})
EVENT_REASONS = MOUNT_EVENTS | SCHEDULING_EVENTS

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Cause:
    """Why a workload does not run: a condition reason and a message naming the Pod and container."""

    reason: str
    message: str

    @property
    def terminal(self) -> bool:
        """A person must act (Degraded in Argo CD); otherwise it may resolve by itself (a node is added)."""
        return self.reason in TERMINAL_REASONS

    @property
    def severity(self) -> int:
        return SEVERITY.index(self.reason) if self.reason in SEVERITY else len(SEVERITY)


def clean(text: object) -> str:
    """One printable line: control characters and runs of whitespace become one space."""
    return _SPACES.sub(" ", "".join(ch if ch.isprintable() else " " for ch in str(text or ""))).strip()


def bounded(head: str, detail: object = "", tail: bool = False, limit: int = LIMIT) -> str:
    """`head: detail` within `limit` characters; a log (`tail`) keeps its end, anything else its start."""
    head, text = clean(head), clean(detail)
    if not text:
        return head[:limit]
    room = limit - len(head) - 2
    if room < 16:
        return f"{head}: {text}"[:limit]
    if len(text) > room:
        text = "..." + text[-(room - 3) :] if tail else text[: room - 3] + "..."
    return f"{head}: {text}"


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def _status(pod: Mapping[str, Any]) -> dict[str, Any]:
    return dict(pod.get("status") or {})


def _claims(pod: Mapping[str, Any]) -> list[str]:
    volumes = (pod.get("spec") or {}).get("volumes") or []
    return sorted(
        {str(v["persistentVolumeClaim"].get("claimName")) for v in volumes if v.get("persistentVolumeClaim")}
    )


def parse_result(message: str | None) -> dict[str, Any]:
    """A worker's termination message is one JSON object; anything else is kept as a plain message."""
    if not message:
        return {}
    try:
        value = json.loads(message)
    except ValueError:
        return {"error": message.strip()[-2000:]}
    return value if isinstance(value, dict) else {"error": str(value)[-2000:]}


def _termination(term: Mapping[str, Any]) -> str:
    """The termination message: a worker's JSON error, else the text (the log tail with FallbackToLogsOnError)."""
    message = str(term.get("message") or "")
    result = parse_result(message)
    return str(result.get("error") or message)


def claim_mounts(pod: Mapping[str, Any], container: str) -> dict[str, str]:
    """Where each PersistentVolumeClaim is mounted in one container: mount path -> claim name."""
    spec = pod.get("spec") or {}
    claims = {
        str(v.get("name")): str(v["persistentVolumeClaim"].get("claimName"))
        for v in spec.get("volumes") or []
        if v.get("persistentVolumeClaim")
    }
    out: dict[str, str] = {}
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if c.get("name") == container:
            for vm in c.get("volumeMounts") or []:
                if str(vm.get("name")) in claims and vm.get("mountPath"):
                    out[str(vm["mountPath"]).rstrip("/")] = claims[str(vm["name"])]
    return out


def explain(detail: str, mounts: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """What a failed run's output comes down to, and whether it is still a log tail (keep its end): a server's
    root-cause line (vLLM, llama.cpp), with a missing model path named as such and, where it lies on a claim,
    the claim named."""
    cause = root_cause(detail) if "\n" in detail.strip() or model_path_missing(detail) else None
    if cause is None:
        return detail, True
    missing = re.match(r"model path (\S+) does not exist", cause)
    if missing is not None and mounts:
        path = missing.group(1)
        for mount, claim in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if path == mount or path.startswith(mount + "/"):
                cause = (f'model path {path} does not exist in PersistentVolumeClaim "{claim}" (mounted at {mount})'
                         + cause[missing.end():])  # fmt: skip
                break
    return cause, False


def container_cause(
    pod: str, cs: Mapping[str, Any], init: bool, image: str = "", mounts: Mapping[str, str] | None = None
) -> Cause | None:
    """What kubelet says of one container: its waiting reason, or (an init container) a failed run. A failed
    run is explained by its root-cause line where the output has one (`mounts`: the container's claims, by
    mount path, to name the claim of a missing model path)."""
    what = f'pod {pod} {"init container" if init else "container"} "{cs.get("name", "?")}"'
    state = cs.get("state") or {}
    waiting = state.get("waiting") or {}
    why = str(waiting.get("reason") or "")
    if why in IMAGE_PULL:
        image = str(cs.get("image") or image or "?")
        return Cause(Reason.IMAGE_PULL_BACK_OFF,
                     bounded(f'{what}: image "{image}" cannot be pulled ({why})', waiting.get("message")))  # fmt: skip
    if why in CONFIG:
        return Cause(
            Reason.CREATE_CONTAINER_CONFIG_ERROR,
            bounded(f"{what} cannot be configured", waiting.get("message")),
        )
    last = (cs.get("lastState") or {}).get("terminated") or {}
    term = state.get("terminated") or {}
    failed_run = init and term and term.get("exitCode") not in (None, 0)
    if why not in CRASHING and not failed_run:
        return None
    ended = term if failed_run else last
    restarts = int(cs.get("restartCount") or 0)
    facts = [f"restarted {restarts} time{'s' if restarts != 1 else ''}"]
    if ended:
        facts.append(
            f"exit code {ended.get('exitCode')}" + (f", {ended['reason']}" if ended.get("reason") else "")
        )
    detail, is_tail = explain(_termination(ended), mounts) if ended else ("", True)
    if not detail and why in CRASHING:
        detail = str(waiting.get("message") or "")
    if not init and (ended.get("reason") == "OOMKilled" or ended.get("exitCode") == 137):
        head = f"{what} ran out of memory ({'; '.join(facts)}); raise resources.memory"
        return Cause(Reason.OOM_KILLED, bounded(head, detail, tail=is_tail))
    verb = "failed" if init else ("keeps crashing" if why == "CrashLoopBackOff" else f"cannot run ({why})")
    reason = Reason.INIT_CONTAINER_FAILED if init else Reason.CRASH_LOOP_BACK_OFF
    if ended and parse_result(str(ended.get("message") or "")).get("reason") == Reason.DIGEST_MISMATCH:
        # The fetch init container refused a model that is not the one recorded when it was made.
        reason = Reason.DIGEST_MISMATCH
    return Cause(reason, bounded(f"{what} {verb} ({'; '.join(facts)})", detail, tail=is_tail))


def _newest(events: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    def when(e: Mapping[str, Any]) -> str:
        return str(
            e.get("lastTimestamp")
            or e.get("eventTime")
            or (e.get("metadata") or {}).get("creationTimestamp")
            or ""
        )

    ordered = sorted(events, key=when)
    return ordered[-1] if ordered else None


def _unscheduled(pod: Mapping[str, Any], message: str) -> Cause:
    name = _name(pod)
    claims = _claims(pod)
    if claims and "persistentvolumeclaim" in message.lower():
        names = ", ".join(f'"{c}"' for c in claims)
        return Cause(Reason.CLAIM_PENDING,
                     bounded(f"pod {name} waits for PersistentVolumeClaim {names} (missing or not bound)", message))  # fmt: skip
    return Cause(Reason.UNSCHEDULABLE, bounded(f"pod {name} cannot be scheduled", message or "no node fits"))


def _container_causes(pod: Mapping[str, Any]) -> list[Cause]:
    name, spec, status = _name(pod), pod.get("spec") or {}, _status(pod)
    containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
    images = {str(c.get("name")): str(c.get("image") or "") for c in containers}
    found: list[Cause] = []
    for init, key in ((True, "initContainerStatuses"), (False, "containerStatuses")):
        for cs in status.get(key) or []:
            cname = str(cs.get("name"))
            cause = container_cause(name, cs, init, images.get(cname, ""), claim_mounts(pod, cname))
            if cause is not None:
                found.append(cause)
    return found


def pod_cause(pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]] = ()) -> Cause | None:
    """The worst thing kubelet or the scheduler reports about one live Pod, or None while it is merely starting.

    `events` are the Pod's own Events (see `needs_events`): a Pod kubelet cannot mount volumes for only says so
    in a FailedMount Event."""
    status = _status(pod)
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    name = _name(pod)
    found = _container_causes(pod)
    if found:
        return min(found, key=lambda c: c.severity)
    scheduled = pod_condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False":
        message = str(scheduled.get("message") or "")
        if not message:
            event = _newest(e for e in events if e.get("reason") in SCHEDULING_EVENTS)
            message = str((event or {}).get("message") or "")
        return _unscheduled(pod, message)
    event = _newest(e for e in events if e.get("reason") in MOUNT_EVENTS)
    if event is not None and status.get("phase", "Pending") == "Pending":
        return Cause(
            Reason.VOLUME_MOUNT_FAILED, bounded(f"pod {name} cannot mount its volumes", event.get("message"))
        )
    return None


def needs_events(pod: Mapping[str, Any]) -> bool:
    """Whether only Events can say why this Pod waits: unscheduled without the scheduler's message, or placed
    on a node but no container started yet (ContainerCreating: kubelet reports volume failures as Events)."""
    status = _status(pod)
    if (pod.get("metadata") or {}).get("deletionTimestamp") or status.get("phase", "Pending") != "Pending":
        return False
    if _container_causes(pod):
        return False
    scheduled = pod_condition(pod, "PodScheduled")
    if scheduled is None:
        return False  # not looked at by a scheduler yet
    if scheduled.get("status") == "False":
        return not scheduled.get("message")
    statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    return all(
        (cs.get("state") or {}).get("waiting", {}).get("reason")
        in (None, "ContainerCreating", "PodInitializing")
        for cs in statuses
    )


def progress_deadline(workload: Mapping[str, Any] | None) -> str | None:
    """The controller's word that a Deployment made no progress within progressDeadlineSeconds, or None."""
    for cond in (workload or {}).get("status", {}).get("conditions") or []:
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
        ):
            return clean(cond.get("message")) or "progress deadline exceeded"
    return None


def diagnose(
    pods: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]] = (),
    workload: Mapping[str, Any] | None = None,
) -> Cause | None:
    """The most severe cause among the Pods (ties: the first Pod by name), and the controller's verdict: a
    Deployment past its progress deadline reports that, with the Pods' cause as the explanation."""
    by_pod: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        involved = event.get("involvedObject") or {}
        if involved.get("kind", "Pod") == "Pod":
            by_pod.setdefault(str(involved.get("name")), []).append(event)
    causes = [c for p in sorted(pods, key=_name) if (c := pod_cause(p, by_pod.get(_name(p), ()))) is not None]
    worst = min(causes, key=lambda c: c.severity) if causes else None
    if worst is not None:
        alike = sum(1 for c in causes if c.reason == worst.reason) - 1
        if alike:
            worst = Cause(worst.reason, f"{worst.message} (and {alike} more Pod{'s' if alike > 1 else ''})")
    deadline = progress_deadline(workload)
    if deadline is None:
        return worst
    head = f"{(workload or {}).get('kind', 'Deployment')} {_name(workload or {})}: {deadline}"
    return Cause(Reason.PROGRESS_DEADLINE_EXCEEDED, f"{head} {worst.message}" if worst else head)


def pod_events(kube: k.Kube, namespace: str, pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Warning Events of the Pods whose state alone does not explain why they wait (one read, and only then).

    The client lists by label only, so this reads the namespace's Events and keeps those of these Pods. Events
    are advisory: a refused or failed read leaves the cause unexplained rather than failing the reconcile."""
    names = {_name(p) for p in pods if needs_events(p)}
    if not names:
        return []
    try:
        events = kube.list(k.EVENT, namespace)
    except k.ApiError as exc:
        log.debug("cannot read Events in %s: %s", namespace, exc)
        return []
    return [
        e
        for e in events
        if e.get("reason") in EVENT_REASONS
        and (e.get("involvedObject") or {}).get("kind") == "Pod"
        and (e.get("involvedObject") or {}).get("name") in names
    ]
