"""Why a workload does not run, from Pods, Events and controllers shaped as kubelet, the scheduler and the
controllers write them (see docs on stuck workloads): one reason and a message a person can act on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuneops import controller as handlers
from tuneops import metrics
from tuneops.api.conditions import READY, STUCK_REASONS, TERMINAL_REASONS, Reason, derive_phase, set_condition
from tuneops.api.inferenceservice import AdapterState
from tuneops.reconcile.base import Outcome
from tuneops.reconcile.inferenceservice import publish_adapters
from tuneops.reconcile.jobs import observe_job
from tuneops.reconcile.workload import (
    LIMIT,
    SEVERITY,
    bounded,
    claim_mounts,
    diagnose,
    needs_events,
    pod_cause,
    progress_deadline,
)

GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
UNBOUND = "0/1 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims."
TRACEBACK = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: model has no config.json'


def pod(
    name: str = "m-merge-abc12",
    phase: str = "Pending",
    scheduled: tuple[str, str] | None = ("True", ""),
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    claims: tuple[str, ...] = (),
    deleting: bool = False,
) -> dict[str, Any]:
    """A Pod as the API server returns it; `scheduled` is the PodScheduled condition (status, message)."""
    status: dict[str, Any] = {"phase": phase, "conditions": []}
    if scheduled is not None:
        cond = {"type": "PodScheduled", "status": scheduled[0]}
        if scheduled[0] == "False":
            cond |= {"reason": "Unschedulable", "message": scheduled[1]}
        status["conditions"].append(cond)
    if containers is not None:
        status["containerStatuses"] = containers
    if init is not None:
        status["initContainerStatuses"] = init
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "creationTimestamp": "2026-01-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "containers": [{"name": "worker", "image": "ghcr.io/x/worker:1"}],
            "volumes": [{"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims],
        },
        "status": status,
    }


def waiting(reason: str, message: str = "", name: str = "worker", image: str = "ghcr.io/x/worker:1",
            restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    cs: dict[str, Any] = {"name": name, "image": image, "ready": False, "restartCount": restarts,
                          "state": {"waiting": {"reason": reason, "message": message}}}  # fmt: skip
    if last is not None:
        cs["lastState"] = {"terminated": last}
    return cs


def terminated(exit_code: int, reason: str = "Error", message: str = "") -> dict[str, Any]:
    return {"exitCode": exit_code, "reason": reason, "message": message, "startedAt": "t", "finishedAt": "t"}


def event(pod_name: str, reason: str, message: str, at: str = "2026-01-01T00:00:30Z") -> dict[str, Any]:
    return {"kind": "Event", "type": "Warning", "reason": reason, "message": message, "lastTimestamp": at,
            "involvedObject": {"kind": "Pod", "name": pod_name, "namespace": "ns"}}  # fmt: skip


@dataclass(frozen=True)
class Case:
    what: str
    pod: dict[str, Any]
    reason: str | None  # None: nothing wrong (yet)
    fragments: tuple[str, ...] = ()
    events: tuple[dict[str, Any], ...] = ()


CASES = [
    Case("no free GPU: the scheduler's message", pod(scheduled=("False", GPU)), Reason.UNSCHEDULABLE,
         ("pod m-merge-abc12", "Insufficient nvidia.com/gpu")),
    Case("unschedulable without a message: the FailedScheduling Event says why", pod(scheduled=("False", "")),
         Reason.UNSCHEDULABLE, ("Insufficient nvidia.com/gpu",), (event("m-merge-abc12", "FailedScheduling", GPU),)),
    Case("unbound claim: named from the Pod's volumes", pod(scheduled=("False", UNBOUND), claims=("artifacts",)),
         Reason.CLAIM_PENDING, ('PersistentVolumeClaim "artifacts"', "unbound immediate")),
    Case("missing claim", pod(scheduled=("False", 'persistentvolumeclaim "models" not found'), claims=("models",)),
         Reason.CLAIM_PENDING, ('"models"', "not found")),
    Case("image cannot be pulled (first try)",
         pod(containers=[waiting("ErrImagePull", 'rpc error: pull access denied for ghcr.io/x/worker, repository does not exist')]),
         Reason.IMAGE_PULL_BACK_OFF, ('container "worker"', 'image "ghcr.io/x/worker:1"', "ErrImagePull", "pull access denied")),
    Case("image pull backing off", pod(containers=[waiting("ImagePullBackOff", 'Back-off pulling image "ghcr.io/x/worker:1"')]),
         Reason.IMAGE_PULL_BACK_OFF, ("ImagePullBackOff", "Back-off pulling")),
    Case("missing Secret for env", pod(containers=[waiting("CreateContainerConfigError", 'secret "hf-token" not found')]),
         Reason.CREATE_CONTAINER_CONFIG_ERROR, ('container "worker"', 'secret "hf-token" not found')),
    Case("missing key in a Secret",
         pod(containers=[waiting("CreateContainerConfigError", "couldn't find key HF_TOKEN in Secret ns/hf-token")]),
         Reason.CREATE_CONTAINER_CONFIG_ERROR, ("HF_TOKEN", "ns/hf-token")),
    Case("crash loop: restarts, exit code and the log tail",
         pod("edge-7d9f-x2", "Running", containers=[waiting(
             "CrashLoopBackOff", "back-off 40s restarting failed container=server pod=edge-7d9f-x2", name="server",
             restarts=4, last=terminated(1, message=TRACEBACK))]),
         Reason.CRASH_LOOP_BACK_OFF,
         ('pod edge-7d9f-x2 container "server" keeps crashing', "restarted 4 times", "exit code 1, Error",
          "ValueError: model has no config.json")),
    Case("crash loop without a termination message: kubelet's back-off message",
         pod("edge-1", "Running", containers=[waiting("CrashLoopBackOff", "back-off 10s restarting failed container=server",
                                                       name="server", restarts=1, last=terminated(2))]),
         Reason.CRASH_LOOP_BACK_OFF, ("restarted 1 time;", "back-off 10s")),
    Case("out of memory, again and again",
         pod("edge-1", "Running", containers=[waiting("CrashLoopBackOff", "", name="server", restarts=2,
                                                       last=terminated(137, "OOMKilled"))]),
         Reason.OOM_KILLED, ("ran out of memory", "OOMKilled", "resources.memory")),
    Case("fetch init container crash-looping: the worker's JSON error",
         pod("edge-1", init=[waiting("CrashLoopBackOff", "back-off 20s", name="fetch", restarts=2,
                                     last=terminated(1, message=json.dumps({"error": "s3://b/m: AccessDenied"})))],
             containers=[waiting("PodInitializing", name="server")]),
         Reason.INIT_CONTAINER_FAILED, ('init container "fetch" failed', "exit code 1", "s3://b/m: AccessDenied")),
    Case("init container just failed (Init:Error)",
         pod("edge-1", init=[{"name": "fetch", "restartCount": 0, "state": {"terminated": terminated(2, message="no such file")}}]),
         Reason.INIT_CONTAINER_FAILED, ("exit code 2", "no such file")),
    Case("init container image missing", pod("edge-1", init=[waiting("ImagePullBackOff", "Back-off", name="fetch",
                                                                     image="ghcr.io/x/fetch:9")]),
         Reason.IMAGE_PULL_BACK_OFF, ('init container "fetch"', 'image "ghcr.io/x/fetch:9"')),
    Case("volume cannot be mounted: only the FailedMount Event says so",
         pod(containers=[waiting("ContainerCreating")]), Reason.VOLUME_MOUNT_FAILED,
         ("cannot mount", 'secret "s3-creds" not found'),
         (event("m-merge-abc12", "FailedMount", 'MountVolume.SetUp failed for volume "creds" : secret "s3-creds" not found'),)),
    Case("the newest FailedMount Event wins",
         pod(containers=[waiting("ContainerCreating")]), Reason.VOLUME_MOUNT_FAILED, ('configmap "b"',),
         (event("m-merge-abc12", "FailedMount", 'configmap "b" not found', "2026-01-01T00:02:00Z"),
          event("m-merge-abc12", "FailedMount", 'configmap "a" not found', "2026-01-01T00:01:00Z"))),
    Case("container being created, nothing wrong yet", pod(containers=[waiting("ContainerCreating")]), None),
    Case("not looked at by a scheduler yet", pod(scheduled=None), None),
    Case("running", pod(phase="Running", containers=[{"name": "worker", "restartCount": 0, "state": {"running": {}}}]), None),
    Case("a Pod being deleted says nothing", pod(containers=[waiting("ImagePullBackOff", "x")], deleting=True), None),
    Case("a finished Pod is the Job's business", pod(phase="Failed", containers=[waiting("ImagePullBackOff", "x")]), None),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_pod_cause(case: Case) -> None:
    cause = pod_cause(case.pod, case.events)
    if case.reason is None:
        assert cause is None
        return
    assert cause is not None
    assert cause.reason == case.reason
    for fragment in case.fragments:
        assert fragment in cause.message, cause.message
    assert len(cause.message) <= LIMIT and cause.message.isprintable()
    assert cause.terminal is (case.reason in TERMINAL_REASONS)


def test_every_cause_is_a_stuck_reason_and_ranked() -> None:
    assert set(SEVERITY) - {Reason.OOM_KILLED} <= STUCK_REASONS
    assert STUCK_REASONS - set(SEVERITY) == {Reason.PROGRESS_DEADLINE_EXCEEDED, Reason.NAME_CONFLICT}


@pytest.mark.parametrize(
    ("reason", "terminal", "phase"),
    [
        (Reason.UNSCHEDULABLE, False, "Pending"),
        (Reason.CLAIM_PENDING, False, "Pending"),
        (Reason.VOLUME_MOUNT_FAILED, False, "Pending"),
        (Reason.IMAGE_PULL_BACK_OFF, True, "Pending"),
        (Reason.CREATE_CONTAINER_CONFIG_ERROR, True, "Pending"),
        (Reason.CRASH_LOOP_BACK_OFF, True, "Failed"),
        (Reason.INIT_CONTAINER_FAILED, True, "Failed"),
        (Reason.PROGRESS_DEADLINE_EXCEEDED, True, "Failed"),
        (Reason.ADAPTER_UNLOAD_FAILED, True, "Failed"),
    ],
)
def test_terminal_decisions_and_phase(reason: str, terminal: bool, phase: str) -> None:
    """Degraded in Argo CD exactly when terminal; a workload that never started is Pending, not Failed."""
    assert (reason in TERMINAL_REASONS) is terminal
    assert derive_phase(set_condition(None, READY, "False", reason, "", 1, "t")) == phase


def test_log_tail_is_bounded_printable_and_keeps_its_end() -> None:
    log = "\x1b[31mstarting\x00\n" + "x\u2028" * 2500 + "\nRuntimeError: CUDA out of memory\r\n"
    cs = waiting("CrashLoopBackOff", "", name="server", restarts=9, last=terminated(1, message=log))
    cause = pod_cause(pod("edge-1", "Running", containers=[cs]))
    assert cause is not None
    assert len(cause.message) <= LIMIT and cause.message.isprintable()
    assert cause.message.endswith("RuntimeError: CUDA out of memory")
    assert 'pod edge-1 container "server"' in cause.message


def test_long_scheduler_message_keeps_its_start() -> None:
    assert bounded("pod p cannot be scheduled", GPU + " x" * 400).startswith(
        "pod p cannot be scheduled: 0/3 nodes"
    )
    assert len(bounded("h", "y" * 1000)) == LIMIT


def test_the_worst_cause_wins_and_the_others_are_counted() -> None:
    pods = [
        pod("p-a", scheduled=("False", GPU)),
        pod("p-b", containers=[waiting("ImagePullBackOff", "Back-off")]),
        pod("p-c", containers=[waiting("ImagePullBackOff", "Back-off")]),
        pod("p-d", phase="Running", containers=[{"name": "worker", "state": {"running": {}}}]),
    ]
    cause = diagnose(pods)
    assert cause is not None and cause.reason == Reason.IMAGE_PULL_BACK_OFF
    assert cause.message.startswith("pod p-b ") and cause.message.endswith("(and 1 more Pod)")


def test_events_reach_only_their_own_pod() -> None:
    pods = [
        pod("p-a", containers=[waiting("ContainerCreating")]),
        pod("p-b", containers=[waiting("ContainerCreating")]),
    ]
    cause = diagnose(pods, [event("p-b", "FailedMount", 'secret "s" not found')])
    assert cause is not None and cause.message.startswith("pod p-b cannot mount")


def deployment(progressing: tuple[str, str, str] = ("True", "ReplicaSetUpdated", "")) -> dict[str, Any]:
    status, reason, message = progressing
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "edge"},
            "status": {"conditions": [{"type": "Progressing", "status": status, "reason": reason, "message": message}]}}  # fmt: skip


PAST = ("False", "ProgressDeadlineExceeded", 'ReplicaSet "edge-7d9f" has timed out progressing.')


def test_progress_deadline_wraps_the_pods_cause() -> None:
    stuck = pod(
        "edge-7d9f-x2", containers=[waiting("ImagePullBackOff", "Back-off", image="vllm/vllm-openai:nope")]
    )
    cause = diagnose([stuck], workload=deployment(PAST))
    assert cause is not None and cause.reason == Reason.PROGRESS_DEADLINE_EXCEEDED and cause.terminal
    assert cause.message.startswith('Deployment edge: ReplicaSet "edge-7d9f" has timed out progressing.')
    assert 'image "vllm/vllm-openai:nope"' in cause.message
    assert diagnose([], workload=deployment(PAST)) is not None
    assert progress_deadline(deployment()) is None
    assert diagnose([], workload=deployment()) is None


@pytest.mark.parametrize(
    ("what", "p", "want"),
    [
        ("unschedulable with the scheduler's message", pod(scheduled=("False", GPU)), False),
        ("unschedulable without a message", pod(scheduled=("False", "")), True),
        ("scheduled, containers being created", pod(containers=[waiting("ContainerCreating")]), True),
        ("scheduled, no container status yet", pod(), True),
        ("init containers initialising", pod(init=[waiting("PodInitializing", name="fetch")]), True),
        ("the container state says why", pod(containers=[waiting("ImagePullBackOff", "x")]), False),
        ("no scheduler has looked yet", pod(scheduled=None), False),
        ("running", pod(phase="Running"), False),
        ("being deleted", pod(deleting=True), False),
    ],
)
def test_events_are_read_only_when_the_pod_alone_cannot_say(what: str, p: dict[str, Any], want: bool) -> None:
    assert needs_events(p) is want, what


def job(active: int = 1) -> dict[str, Any]:
    return {"status": {"active": active}}


@pytest.mark.parametrize(
    ("what", "pods", "events", "reason", "fragment"),
    [
        ("Pod pending, nothing wrong yet", [pod()], [], Reason.JOB_PENDING, ""),
        ("no GPU for the Pod", [pod(scheduled=("False", GPU))], [], Reason.UNSCHEDULABLE, "Insufficient"),
        ("the worker image is missing", [pod(containers=[waiting("ErrImagePull", "not found")])], [],
         Reason.IMAGE_PULL_BACK_OFF, 'image "ghcr.io/x/worker:1"'),
        ("the token Secret is missing", [pod(containers=[waiting("CreateContainerConfigError", 'secret "hf-token" not found')])],
         [], Reason.CREATE_CONTAINER_CONFIG_ERROR, "hf-token"),
        ("a volume Secret is missing", [pod(containers=[waiting("ContainerCreating")])],
         [event("m-merge-abc12", "FailedMount", 'secret "s3-creds" not found')], Reason.VOLUME_MOUNT_FAILED, "s3-creds"),
        ("a retry after a failed Pod cannot be scheduled",
         [pod("m-merge-1", "Failed", containers=[{"name": "worker", "state": {"terminated": terminated(1)}}]),
          pod("m-merge-2", scheduled=("False", GPU))], [], Reason.UNSCHEDULABLE, "pod m-merge-2"),
    ],
)  # fmt: skip
def test_a_pending_job_says_why(
    what: str, pods: list[dict[str, Any]], events: list[dict[str, Any]], reason: str, fragment: str
) -> None:
    out = observe_job(job(), pods, events)
    assert (out.state, out.reason) == ("Pending", reason), what
    assert fragment in out.message


def test_a_running_job_is_running_whatever_an_old_event_says() -> None:
    running = pod(phase="Running", containers=[{"name": "worker", "state": {"running": {}}}])
    out = observe_job(job(), [running], [event("m-merge-abc12", "FailedMount", "old")])
    assert (out.state, out.reason) == ("Running", Reason.JOB_RUNNING)


@pytest.mark.parametrize(
    ("outcome", "result"),
    [
        (Outcome(reason=Reason.UNSCHEDULABLE, requeue_after=1.0), "progressing"),
        (Outcome(reason=Reason.IMAGE_PULL_BACK_OFF, requeue_after=1.0), "failed"),
        (Outcome(reason=Reason.JOB_FAILED), "failed"),
        (Outcome(reason=Reason.INVALID_SPEC), "invalid"),
        (Outcome(reason=Reason.WAITING_FOR_SOURCE, requeue_after=1.0), "waiting"),
        (Outcome(ready=True, reason=Reason.SUCCEEDED), "ready"),
    ],
)
def test_reconcile_results_count_a_stuck_terminal_workload_as_failed(outcome: Outcome, result: str) -> None:
    """tuneops_reconcile_total: looking again at a Pod in ImagePullBackOff is not progress."""
    assert handlers._result(outcome) == result


def served(ns: str, name: str) -> dict[str, float]:
    return {
        s.labels["state"]: s.value
        for m in metrics.REGISTRY.collect()
        if m.name == "tuneops_adapters_served"
        for s in m.samples
        if s.labels["resource_namespace"] == ns and s.labels["name"] == name
    }


def test_adapters_served_gauge_follows_status_and_leaves_with_the_service() -> None:
    states = [AdapterState(name="a", state="Ready", ready_pods=2), AdapterState(name="b", state="Ready"),
              AdapterState(name="c", state="Failed", message="404")]  # fmt: skip
    publish_adapters("team", "edge", states)
    assert served("team", "edge") == {"Ready": 2, "Loading": 0, "Pending": 0, "Failed": 1}
    publish_adapters("team", "edge", [])
    assert served("team", "edge") == {"Ready": 0, "Loading": 0, "Pending": 0, "Failed": 0}
    publish_adapters("team", "edge", None)
    assert served("team", "edge") == {}
    publish_adapters("team", "never-had-adapters", None)  # removing what was never published is fine


# ------------------------------------------------------------------------------------ the servers' own errors
# Real output of vLLM 0.32 (CPU build) and llama.cpp's llama-server, captured by starting them with each mistake
# (tests/unit/fixtures/server_errors; `mp-` ones with VLLM_ENABLE_V1_MULTIPROCESSING=1, as on GPUs).
FIXTURES = Path(__file__).parent / "fixtures" / "server_errors"


def kubelet_tail(text: str) -> str:
    """What kubelet keeps of a log as the termination message (FallbackToLogsOnError): the last 80 lines, at
    most 2048 bytes."""
    return "\n".join(text.splitlines()[-80:])[-2048:]


def server_pod(message: str, claim: str = "models") -> dict[str, Any]:
    p = pod("edge-7d9f-x2", "Running", containers=[waiting(
        "CrashLoopBackOff", "back-off 40s restarting failed container=server", name="server", restarts=3,
        last=terminated(1, message=message))])  # fmt: skip
    p["spec"]["containers"] = [{"name": "server", "image": "vllm/vllm-openai:v0.32.0", "volumeMounts": [
        {"name": f"pvc-{claim}", "mountPath": f"/mnt/pvc/{claim}", "readOnly": True}]}]  # fmt: skip
    p["spec"]["volumes"] = [{"name": f"pvc-{claim}", "persistentVolumeClaim": {"claimName": claim}}]
    return p


SERVER_ERRORS = [
    # (fixture, fragments of the status message: the root cause, paths shown, model-path mistakes named)
    ("model-missing", ("model path /nonexistent/model does not exist",)),
    ("model-typo-pvc", ('model path /mnt/pvc/models/tiny-typo does not exist in PersistentVolumeClaim "models" '
                        "(mounted at /mnt/pvc/models)",)),
    ("lora-rank", ("ValueError: LoRA rank 16 is greater than max_lora_rank 8.",)),
    ("mp-lora-rank", ("ValueError: LoRA rank 16 is greater than max_lora_rank 8.",)),
    ("lora-missing", ("No adapter found for",)),
    ("mp-lora-missing", ("No adapter found for",)),
    ("llamacpp-missing", ('model path /mnt/pvc/models/tiny-typo.gguf does not exist in PersistentVolumeClaim "models"',)),
    ("llamacpp-bad-file", ("invalid magic characters", "expected 'GGUF'")),
]  # fmt: skip


@pytest.mark.parametrize(("fixture", "fragments"), SERVER_ERRORS, ids=[e[0] for e in SERVER_ERRORS])
def test_server_root_cause_in_status(fixture: str, fragments: tuple[str, ...]) -> None:
    """A crash-looping server's status names the root cause out of what kubelet kept of its log, never a
    wrapper ("See root cause above", "please check the stack trace above") or a Hub repo-id complaint."""
    cause = pod_cause(server_pod(kubelet_tail((FIXTURES / f"{fixture}.log").read_text())))
    assert cause is not None and cause.reason == Reason.CRASH_LOOP_BACK_OFF
    assert cause.message.startswith('pod edge-7d9f-x2 container "server" keeps crashing (restarted 3 times; ')
    for fragment in fragments:
        assert fragment in cause.message, cause.message
    for noise in (
        "root cause above",
        "stack trace above",
        "Repo id must be",
        "resource_tracker",
        "warnings.warn",
    ):
        assert noise not in cause.message, cause.message
    assert len(cause.message) <= LIMIT and cause.message.isprintable()


def test_claim_mounts_of_one_container() -> None:
    p = server_pod("x")
    assert claim_mounts(p, "server") == {"/mnt/pvc/models": "models"}
    assert claim_mounts(p, "other") == {}
