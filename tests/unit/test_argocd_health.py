"""The Argo CD health checks (Lua) are the generated ones and return the expected health for status samples.

Argo CD runs health scripts in gopher-lua, a Lua 5.1; the tests run them in Lua 5.1 through lupa, with the
resource as the global `obj`, exactly as Argo CD hands it over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lupa
import pytest
import yaml

from tuneops import argocd
from tuneops.api.conditions import TERMINAL_REASONS, Reason

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "charts" / "tuneops" / "argocd"
ARGOCD_CM = ARGOCD / "argocd-cm.yaml"
KINDS = ("FineTunedModel", "QuantizationJob", "InferenceService", "LoRAAdapter")


def script(kind: str) -> str:
    """A kind's health check as Argo CD reads it: from the committed argocd-cm patch."""
    data: dict[str, str] = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    return data[argocd.config_key(kind)]


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script(kind))
    assert result is not None, f"the {kind} health check returned nothing"
    return str(result["status"]), str(result["message"] or "")


def resource(
    kind: str,
    generation: int = 1,
    observed: int | None = 1,
    ready: tuple[str, str, str] | None = None,
    status: bool = True,
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "m", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if not status:
        return obj
    st: dict[str, Any] = {"conditions": []}
    if observed is not None:
        st["observedGeneration"] = observed
    if ready is not None:
        value, reason, message = ready
        st["conditions"].append(
            {"type": "Inspected", "status": "True", "reason": "Succeeded", "message": "rank 8"}
        )
        st["conditions"].append({"type": "Ready", "status": value, "reason": reason, "message": message})
    obj["status"] = st
    return obj


# (what, how the sample differs from a current resource (see `resource`), expected health, message fragment),
# for every kind.
COMMON_CASES = [
    ("missing status", {"status": False}, "Progressing", "report status"),
    ("status without conditions", {}, "Progressing", "No Ready condition"),
    ("stale generation, even if Ready",
     {"generation": 3, "observed": 2, "ready": ("True", "Succeeded", "ok")}, "Progressing", "generation 3"),
    ("stale generation hides an old failure",
     {"generation": 2, "observed": 1, "ready": ("False", "JobFailed", "boom")}, "Progressing", "generation 2"),
    ("no observedGeneration yet", {"observed": None, "ready": ("True", "Succeeded", "ok")}, "Progressing", "generation 1"),
    ("ready", {"ready": ("True", "Succeeded", "model is ready")}, "Healthy", "model is ready"),
    ("failed: Job failed", {"ready": ("False", "JobFailed", "merge failed: exit 1")}, "Degraded", "merge failed"),
    ("failed: invalid spec", {"ready": ("False", "InvalidSpec", "spec.x: bad")}, "Degraded", "spec.x"),
    ("job pending", {"ready": ("False", "JobPending", "")}, "Progressing", "JobPending"),
    ("job running", {"ready": ("Unknown", "JobRunning", "merging")}, "Progressing", "merging"),
    ("waiting for its source",
     {"ready": ("False", "WaitingForSource", "FineTunedModel ns/a is not Ready yet")}, "Progressing", "not Ready yet"),
    ("Ready=Unknown", {"ready": ("Unknown", "Reconciling", "")}, "Progressing", "Reconciling"),
]  # fmt: skip

# (kind, what, Ready condition (status, reason, message), expected health, expected message fragment)
KIND_CASES = [
    ("QuantizationJob", "quality gate failed", ("False", "QualityGateFailed", "perplexity +12% > 5%"), "Degraded", "perplexity"),
    ("QuantizationJob", "OOM killed", ("False", "OOMKilled", "quantize: OOMKilled"), "Degraded", "OOMKilled"),
    ("FineTunedModel", "incompatible adapter", ("False", "IncompatibleAdapter", "rank 1024 > 512"), "Degraded", "rank"),
    ("InferenceService", "deploying", ("False", "Deploying", "0/1 replicas available"), "Progressing", "0/1"),
    ("InferenceService", "adapters loading", ("False", "AdaptersLoading", "loading adapters"), "Progressing", "loading"),
    ("InferenceService", "rollout in progress while serving",
     ("True", "MinimumReplicasAvailable", "serving; rollout in progress (1/2)"), "Progressing", "rollout"),
    ("InferenceService", "adapter failed to load", ("False", "AdapterLoadFailed", "adapter sql: 404"), "Degraded", "adapter sql"),
    ("InferenceService", "serving", ("True", "Succeeded", "serving base, sql at http://x"), "Healthy", "serving"),
    ("InferenceService", "adapter could not be unloaded", ("False", "AdapterUnloadFailed", "adapter old: 500"), "Degraded", "adapter old"),
    # Stuck workloads: Degraded where Argo CD's own Pod and Deployment health says so, else Progressing.
    ("FineTunedModel", "merge Pod waits for a GPU",
     ("False", "Unschedulable", "merge Job m-merge-1: pod m-merge-1-x cannot be scheduled: 0/3 nodes are available"),
     "Progressing", "0/3 nodes"),
    ("FineTunedModel", "merge Pod waits for its claim", ("False", "ClaimPending", 'PersistentVolumeClaim "artifacts"'),
     "Progressing", "artifacts"),
    ("QuantizationJob", "quantize Pod cannot mount a volume", ("False", "VolumeMountFailed", 'secret "s3" not found'),
     "Progressing", "s3"),
    ("FineTunedModel", "worker image cannot be pulled",
     ("False", "ImagePullBackOff", 'pod m-merge-1-x container "worker": image "w:9" cannot be pulled'), "Degraded", 'image "w:9"'),
    ("QuantizationJob", "token Secret missing", ("False", "CreateContainerConfigError", 'secret "hf-token" not found'),
     "Degraded", "hf-token"),
    ("InferenceService", "server crash-looping", ("False", "CrashLoopBackOff", "keeps crashing (restarted 4 times)"),
     "Degraded", "restarted 4 times"),
    ("InferenceService", "fetch init container failing", ("False", "InitContainerFailed", 'init container "fetch" failed'),
     "Degraded", "fetch"),
    ("InferenceService", "rollout past its deadline", ("False", "ProgressDeadlineExceeded", "rollout stuck"),
     "Degraded", "rollout stuck"),
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("what", "sample", "want", "fragment"), COMMON_CASES, ids=[c[0] for c in COMMON_CASES]
)
def test_common_samples(kind: str, what: str, sample: dict[str, Any], want: str, fragment: str) -> None:
    got, message = health(kind, resource(kind, **sample))
    assert got == want, f"{kind} {what}: {got} ({message})"
    assert fragment in message


@pytest.mark.parametrize(
    ("kind", "what", "ready", "want", "fragment"), KIND_CASES, ids=[c[1] for c in KIND_CASES]
)
def test_kind_samples(kind: str, what: str, ready: tuple[str, str, str], want: str, fragment: str) -> None:
    got, message = health(kind, resource(kind, ready=ready))
    assert got == want, f"{kind} {what}: {got} ({message})"
    assert fragment in message


REASONS = sorted(v for k, v in vars(Reason).items() if k.isupper())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reason", REASONS)
def test_degraded_exactly_on_the_operators_terminal_reasons(kind: str, reason: str) -> None:
    """The Lua tables agree with tuneops.api.conditions.TERMINAL_REASONS: no terminal reason left out, none added."""
    got, _ = health(kind, resource(kind, ready=("False", reason, "m")))
    assert got == ("Degraded" if reason in TERMINAL_REASONS else "Progressing")


def test_committed_files_are_the_generated_ones() -> None:
    generated = argocd.files()
    committed = {str(p.relative_to(ARGOCD)) for p in ARGOCD.rglob("*") if p.is_file()}
    assert committed == set(generated), "run `tuneops argocd` and commit charts/tuneops/argocd"
    for name, text in generated.items():
        assert (ARGOCD / name).read_text() == text, (
            f"charts/tuneops/argocd/{name} is stale: run `tuneops argocd` and commit the result"
        )


def test_cli_writes_the_files_and_prints_the_patch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneops.cli import main

    assert main(["argocd", "-o", str(tmp_path)]) == 0
    for name in argocd.files():
        assert (tmp_path / name).read_text() == (ARGOCD / name).read_text(), name
    capsys.readouterr()
    assert main(["argocd", "-o", "-"]) == 0
    assert capsys.readouterr().out == ARGOCD_CM.read_text()


def test_argocd_cm_snippet_carries_the_scripts_unchanged() -> None:
    cm = yaml.safe_load(ARGOCD_CM.read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    expected = {f"resource.customizations.health.tuneops.io_{k}": argocd.health_script(k) for k in KINDS}
    expected["resource.customizations.ignoreDifferences.tuneops.io_InferenceService"] = (
        argocd.ignore_differences("InferenceService")
    )
    assert cm["data"] == expected


def test_example_applications_point_at_what_exists(tmp_path: Path) -> None:
    from tests.unit.chart_support import CHART, helm, values_args
    from tuneops.api import KINDS, parse_spec

    chart_app = yaml.safe_load((ROOT / "examples" / "argocd" / "tuneops-operator.yaml").read_text())
    source = chart_app["spec"]["source"]
    assert (ROOT / source["path"] / "Chart.yaml").is_file()
    # The Application's values render (schema included) without the crds/ copies, as Argo CD is told to.
    out = helm(
        "template",
        "tuneops",
        str(CHART),
        "--skip-crds",
        *values_args(source["helm"]["valuesObject"], tmp_path),
    )
    docs = [d for d in yaml.safe_load_all(out) if d]
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 4 and source["helm"]["skipCrds"] is True

    model_app = yaml.safe_load((ROOT / "examples" / "argocd" / "model.yaml").read_text())
    source = model_app["spec"]["source"]
    manifests = ROOT / source["path"] / source["directory"]["include"]
    kinds = set()
    for doc in yaml.safe_load_all(manifests.read_text()):
        if doc and doc.get("kind") in KINDS:
            parse_spec(doc["kind"], doc)
            kinds.add(doc["kind"])
    assert kinds, f"{manifests} holds no tuneops resources"
