"""`tuneops demo`: the quickstart on this machine, from tiny adapters to answers from vLLM and llama.cpp."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneops.api.conditions import STUCK_REASONS, TERMINAL_REASONS, Reason
from tuneops.kube.client import CUSTOM, POD, ApiError, Kube, ResourceType
from tuneops.local.cli import (
    ARTIFACT_CLAIM,
    REPO,
    LocalCluster,
    Say,
    cluster_url,
    default_root,
    ensure_tools,
)
from tuneops.local.node import PVC

QUICKSTART = REPO / "examples" / "quickstart.yaml"
SHORT = {"FineTunedModel": "ftm", "QuantizationJob": "qjob", "InferenceService": "tisvc"}

BASE_MODEL = "models/tiny-llama"
ADAPTERS = {"adapters/tiny-chat": 1, "adapters/tiny-sql": 2, "adapters/tiny-extra": 3}
TRAIN_STEPS = 20
PV = ResourceType("v1", "PersistentVolume", "persistentvolumes", namespaced=False)
CLAIM_URI = re.compile(r"pvc://([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)")


# A step that failed for good: the demo stops and says how to retry (a stuck workload may heal by itself, and an
# adapter that fails leaves the rest serving).
STEP_FAILED = TERMINAL_REASONS - STUCK_REASONS - {Reason.ADAPTER_LOAD_FAILED, Reason.ADAPTER_UNLOAD_FAILED}


class DemoError(RuntimeError):
    """A step of the demo failed or timed out; the message says which and why."""


def make_models(pvc_root: Path, say: Say = print) -> None:
    """The tiny base model and its adapters in the node's claims (kept when already there)."""
    from tuneops.workers.tiny import TinyAdapterSpec, TinyModelSpec, make_adapter, make_model

    base = pvc_root / BASE_MODEL
    if not (base / "tuneops-tiny.json").is_file():
        say(f"==> making a tiny base model in {base} (a few seconds of training)")
        make_model(base, TinyModelSpec(train_steps=TRAIN_STEPS))
    for rel, seed in ADAPTERS.items():
        out = pvc_root / rel
        if not (out / "adapter_config.json").is_file():
            say(f"==> making LoRA adapter {out}")
            make_adapter(base, out, TinyAdapterSpec(seed=seed))


def load_manifests(path: Path = QUICKSTART) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]


def claims_of(manifests: Iterable[dict[str, Any]]) -> list[str]:
    """The PersistentVolumeClaims the manifests' pvc:// URIs name, and the operator's artifact claim."""
    return sorted({ARTIFACT_CLAIM, *CLAIM_URI.findall(json.dumps(list(manifests)))})


def ensure_claims(api: Kube, names: Iterable[str], namespace: str, pvc_root: Path) -> None:
    """Each claim with a volume bound to it (the node's folder for it), as a cluster's provisioner leaves them:
    the local node refuses to schedule a Pod whose claim does not exist, as the scheduler does."""
    for name in names:
        pv_name = f"local-{namespace}-{name}"
        if api.get(PV, None, pv_name) is None:
            api.create(PV, None, {
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "labels": {"app.kubernetes.io/managed-by": "tuneops-local"}},
                "spec": {
                    "capacity": {"storage": "100Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": str(pvc_root / name)},
                    "claimRef": {"namespace": namespace, "name": name},
                },
            })  # fmt: skip
        if api.get(PVC, namespace, name) is None:
            api.create(PVC, namespace, {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv_name,
                         "resources": {"requests": {"storage": "100Gi"}}},
            })  # fmt: skip


def apply(api: Kube, manifests: Iterable[dict[str, Any]], namespace: str) -> None:
    """Server-side apply, as `kubectl apply --server-side` does."""
    for m in manifests:
        api.apply({**m, "metadata": {**m["metadata"], "namespace": namespace}}, field_manager="tuneops-demo")


def delete(api: Kube, manifests: Iterable[dict[str, Any]], namespace: str) -> None:
    for m in manifests:
        api.delete(CUSTOM[m["kind"]], namespace, m["metadata"]["name"], propagation="Foreground")


@dataclass(frozen=True)
class Condition:
    status: str
    reason: str
    message: str


def ready_condition(obj: dict[str, Any] | None) -> Condition | None:
    """The Ready condition when the status describes the current generation."""
    if not obj:
        return None
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return None
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return Condition(str(c.get("status")), str(c.get("reason") or ""), str(c.get("message") or ""))
    return None


def wait_ready(
    api: Kube,
    manifests: list[dict[str, Any]],
    namespace: str,
    timeout: float,
    say: Say = print,
    live: bool = False,
) -> dict[str, float]:
    """Print each Ready change as it happens; return when every resource is Ready (seconds each took)."""
    start = time.monotonic()
    last: dict[str, Condition | None] = {}
    pods: dict[str, str] = {}
    done: dict[str, float] = {}
    keys = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    while True:
        elapsed = time.monotonic() - start
        for kind, name in keys:
            key = f"{SHORT[kind]}/{name}"
            cond = ready_condition(api.get(CUSTOM[kind], namespace, name))
            prev = last.get(key)
            # A waiting resource's message repeats its source's progress; say it once per reason.
            changed = prev is None or (cond is not None and (
                (cond.status, cond.reason) != (prev.status, prev.reason)
                or (cond.message != prev.message and cond.reason != "WaitingForSource")
            ))  # fmt: skip
            if changed and cond is not None:
                _clear(live)
                text = f"{cond.reason}: {cond.message}" if cond.message else cond.reason
                mark = "ready" if cond.status == "True" else "     "
                say(f"[{elapsed:6.1f}s] {mark} {key:28} {text[:150]}")
            last[key] = cond
            if cond is not None and cond.status == "True" and key not in done:
                done[key] = elapsed
            if cond is not None and cond.status == "False" and cond.reason in STEP_FAILED:
                raise DemoError(
                    f"{key} failed: {cond.reason}: {cond.message}\n"
                    f"  what it means and how to fix it: docs/troubleshooting.md#reasons ({cond.reason}); once fixed, "
                    f"retry without a spec change: kubectl annotate --overwrite {key} tuneops.io/refresh=$(date +%s)"
                )
        for pod in api.list(POD, namespace):
            pname = pod["metadata"]["name"]
            phase = str((pod.get("status") or {}).get("phase") or "Pending")
            if pods.get(pname) != phase:
                pods[pname] = phase
                _clear(live)
                say(f"[{elapsed:6.1f}s]       pod/{pname:24} {phase}")
        if len(done) == len(keys):
            _clear(live)
            return done
        if elapsed > timeout:
            waiting = [k for k in (f"{SHORT[a]}/{b}" for a, b in keys) if k not in done]
            raise DemoError(f"timed out after {timeout:.0f}s; not Ready: {', '.join(waiting)}")
        if live:
            waiting = [
                f"{k} ({(last.get(k) or Condition('', 'Pending', '')).reason})" for k in last if k not in done
            ]
            bar = _bar(len(done), len(keys))
            sys.stdout.write(
                f"\r[{elapsed:6.1f}s] {bar} {len(done)}/{len(keys)} ready; waiting: {', '.join(waiting)}"[
                    :160
                ]
            )
            sys.stdout.flush()
        time.sleep(1.0)


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = int(width * done / max(total, 1))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _clear(live: bool) -> None:
    if live:
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()


def chat(base_url: str, model: str, prompt: str, max_tokens: int = 24, timeout: float = 120.0) -> str:
    """One OpenAI chat completion (temperature 0); returns the answer's text."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    req = urllib.request.Request(
        base_url.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        data = json.loads(resp.read())
    if data.get("model") not in (model, None) and "choices" not in data:
        raise RuntimeError(f"unexpected answer: {data}")
    return str(data["choices"][0]["message"]["content"])


def chat_when_serving(base_url: str, model: str, prompt: str, deadline: float, say: Say = print) -> str:
    """`chat`, retried while the server is not answering yet. Ready in status can run ahead of a process
    that restarts (e.g. `tuneops local up` again on an existing root: its Pods are restarted and reload)."""
    waited = False
    while True:
        try:
            return chat(base_url, model, prompt)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as err:
            if time.monotonic() > deadline:
                raise DemoError(f"chat completion for model {model!r} at {base_url} failed: {err}") from err
            if not waited:
                say(f"  waiting for {model!r} to answer ({err})")
                waited = True
            time.sleep(2)


def endpoint(
    cluster: LocalCluster, namespace: str, service: str, port: int = 8000, timeout: float = 30.0
) -> str:
    """The local URL the node's Service proxy gives `service` (waits for the listener)."""
    key = f"{namespace}/{service}/{port}"
    deadline = time.monotonic() + timeout
    while True:
        url = cluster.endpoints().get(key)
        if url:
            return url
        if time.monotonic() > deadline:
            raise DemoError(f"no local endpoint for Service {namespace}/{service} port {port}")
        time.sleep(0.3)


def served_names(api: Kube, namespace: str, name: str) -> list[str]:
    obj = api.get(CUSTOM["InferenceService"], namespace, name) or {}
    return list((obj.get("status") or {}).get("servedModels") or [])


# A workload a tiny model on two cores measures in a minute or two: both servers, two concurrency levels.
DEMO_BENCHMARK: dict[str, Any] = {
    "enabled": True, "concurrency": [1, 4], "inputLen": 32, "outputLen": 16, "prompts": 8, "maxModelLen": 256,
    "job": {"resources": {"requests": {"cpu": "2", "memory": "6Gi"}}},
}  # fmt: skip


def with_benchmark(manifests: Iterable[dict[str, Any]]) -> list[str]:
    """Ask every merged FineTunedModel of `manifests` for the merge-or-serve benchmark; their names."""
    names = []
    for m in manifests:
        if m["kind"] == "FineTunedModel" and (m["spec"].get("merge") or {}).get("enabled", True):
            m["spec"]["benchmark"] = copy.deepcopy(DEMO_BENCHMARK)
            names.append(m["metadata"]["name"])
    return names


def wait_benchmarked(api: Kube, namespace: str, name: str, timeout: float) -> dict[str, Any]:
    """A FineTunedModel's status once its Benchmarked condition is True or False (the caller reads which)."""
    deadline = time.monotonic() + timeout
    while True:
        obj = api.get(CUSTOM["FineTunedModel"], namespace, name) or {}
        status: dict[str, Any] = obj.get("status") or {}
        cond: dict[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Benchmarked"), {}
        )
        if cond.get("status") in ("True", "False"):
            return status
        if time.monotonic() > deadline:
            raise DemoError(
                f"ftm/{name}: no benchmark result after {timeout:.0f}s ({cond.get('message', '')})"
            )
        time.sleep(2)


def benchmark_table(status: dict[str, Any]) -> list[str]:
    """The benchmark's figures as lines of a table, then the recommendation."""
    bench = status.get("benchmark") or {}
    lines = [f"  {'variant':8} {'conc.':>5} {'tokens/s':>9} {'TTFT p50':>9} {'ITL p50':>8} {'s/1k tok':>8}"]
    for f in bench.get("figures") or []:
        lines.append(f"  {f['variant']:8} {f['concurrency']:>5} {f['outputTokensPerS']:>9.1f} "
                     f"{f['ttftP50Ms']:>7.1f}ms {f['itlP50Ms']:>6.1f}ms {f['acceleratorSPerThousandTokens']:>8.2f}")  # fmt: skip
    lines.append(f"  recommendation: {bench.get('reason')} (quality gap {bench.get('qualityGap')})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneops demo", description=__doc__)
    parser.add_argument(
        "--root", type=Path, default=None, help="state folder (default $TUNEOPS_LOCAL_DIR or <cache>/local)"
    )
    parser.add_argument("-n", "--namespace", default="default")
    parser.add_argument("-f", "--filename", type=Path, default=QUICKSTART, help="manifests to apply")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for every resource")
    parser.add_argument(
        "--down",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("CI", "").lower() in ("1", "true", "yes"),
        help="stop everything at the end (default: only when CI=true)",
    )
    parser.add_argument(
        "--containers",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("CONTAINERS", os.environ.get("TUNEOPS_CONTAINERS", "")) not in ("", "0"),
        help="run every Pod as a container from the project's images (`make images`; CONTAINERS=1)",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="also measure each merged FineTunedModel against its LoRA path (spec.benchmark; docs/merge-or-serve.md)",
    )
    args = parser.parse_args(argv)
    say: Say = print
    started = time.monotonic()
    say("tuneops demo: a fine-tuned model from adapter to served, quantized endpoints, on this machine.\n")
    ensure_tools(["kube", "llamacpp", "vllm"], say)
    cluster = LocalCluster(args.root or default_root(), containers=args.containers)
    ok = False
    try:
        cluster.up(say)
        say(f"\nexport KUBECONFIG={cluster.kubeconfig}\n")
        make_models(cluster.pvc_root, say)
        api = Kube.from_kubeconfig(cluster.kubeconfig, user_agent="tuneops-demo")
        manifests = load_manifests(args.filename)
        benchmarked = with_benchmark(manifests) if args.benchmark else []
        ensure_claims(api, claims_of(manifests), args.namespace, cluster.pvc_root)
        apply(api, manifests, args.namespace)
        say(
            f"==> applied {args.filename} ({len(manifests)} resources in namespace {args.namespace}); progress:"
        )
        took = wait_ready(api, manifests, args.namespace, args.timeout, say, live=sys.stdout.isatty())
        say(f"\n==> every resource is Ready ({max(took.values()):.0f}s)\n")
        for m in manifests:
            if m["kind"] != "InferenceService":
                continue
            name = m["metadata"]["name"]
            url = endpoint(cluster, args.namespace, name)
            in_cluster = cluster_url(f"{args.namespace}/{name}/8000")
            say(f"{m['kind']} {name}: {url}/v1 (from this machine; in the cluster: {in_cluster}/v1)")
            for model in served_names(api, args.namespace, name):
                prompt = "Say hello in three words."
                answer = chat_when_serving(url, model, prompt, time.monotonic() + args.timeout, say)
                say(f"  model {model!r:14} -> {answer.strip()[:100]!r}")
        say("\nThe answers come from tiny random models, so they are gibberish; the plumbing is real.")
        for name in benchmarked:
            say(
                f"\n==> ftm/{name}: merged model against the base with the adapter as LoRA (vllm bench serve)"
            )
            status = wait_benchmarked(api, args.namespace, name, args.timeout)
            cond = next(c for c in status["conditions"] if c["type"] == "Benchmarked")
            if cond["status"] != "True":
                raise DemoError(f"ftm/{name}: benchmark failed: {cond.get('message')}")
            for line in benchmark_table(status):
                say(line)
        say("Try:")
        say(f"  export KUBECONFIG={cluster.kubeconfig}")
        say("  kubectl get ftm,qjob,tisvc,jobs,pods -o wide")
        say("  tuneops local status      # processes and endpoint URLs")
        say("  tuneops local down        # stop everything (by PID)")
        mode = " (Pods as containers)" if args.containers else ""
        say(f"\ndemo finished in {time.monotonic() - started:.0f}s{mode}")
        ok = True
    except (ApiError, DemoError) as err:
        say(f"error: {err}")
    finally:
        if args.down or not ok:
            if not ok:
                say(f"logs: {cluster.log_dir} and {cluster.node_root / 'pods'}")
            if args.down:
                cluster.down(say=say)
    return 0 if ok else 1
