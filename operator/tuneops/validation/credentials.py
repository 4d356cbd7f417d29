"""Which s3:// sources a spec may read or write without a Secret of their own: none, unless the operator config
allows ambient credentials.

An s3:// URI without `tokenSecretRef` gets no credentials from tuneops; its worker would otherwise fall back to
whatever AWS identity the Pod or its node has (an IAM role for service accounts, EKS Pod Identity, the instance
profile): an identity the tenant did not bring, and that may open other tenants' buckets. The operator config's
`allowAmbientCredentials` (chart value `config.allowAmbientCredentials`, default false) is the administrator's
decision to lend it. Off, such a spec is refused before any child exists (`Ready=False, reason=NotAllowed`, one
problem per field), by the operator and by `tuneops validate` alike; the workers, for their part, make unsigned
requests for a source without keys unless the renderer tells them ambient credentials are allowed
(storage.credentials).

Only what the spec itself names is checked here. A source read through a reference (a QuantizationJob's
`source.fineTunedModelRef`, an InferenceService's `model.*Ref`) is an s3:// URI only once the reference is
resolved: check it then with `check_source_credentials`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from tuneops.api.common import SecretKeyRef
from tuneops.api.conditions import Reason
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.types import Problem

_HOW = (
    "or have the administrator set allowAmbientCredentials in the operator config (chart value "
    "config.allowAmbientCredentials) to let such sources use the Pod's or node's own AWS identity"
)


def _is_s3(uri: str | None) -> bool:
    return bool(uri) and str(uri).partition("://")[0].lower() == "s3"


def check_source_credentials(
    field: str,
    uri: str | None,
    secret: SecretKeyRef | None,
    config: OperatorConfig,
    *,
    secret_field: str = "",
) -> Problem | None:
    """NotAllowed when `uri` is s3:// with no Secret and the config does not allow ambient credentials.

    `field` names the URI (`spec.adapter.uri`), `secret_field` where its Secret goes (default: the URI field's
    sibling `tokenSecretRef`)."""
    if not _is_s3(uri) or secret is not None or config.allow_ambient_credentials:
        return None
    where = secret_field or field.rsplit(".", 1)[0] + ".tokenSecretRef"
    return Problem(
        Reason.NOT_ALLOWED,
        field,
        f"{uri} has no Secret of its own, and the operator config does not allow ambient credentials: name a "
        f"Secret with the bucket's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in {where}, {_HOW}",
    )


def _sources(spec: BaseModel) -> Iterator[tuple[str, str | None, SecretKeyRef | None]]:
    """(URI field, URI, Secret) of every URI the spec names."""
    if isinstance(spec, FineTunedModelSpec):
        yield "spec.baseModel.uri", spec.base_model.uri, spec.base_model.token_secret_ref
        yield "spec.adapter.uri", spec.adapter.uri, spec.adapter.token_secret_ref
    elif isinstance(spec, QuantizationJobSpec):
        yield "spec.source.uri", spec.source.uri, spec.source.token_secret_ref
        if spec.awq is not None:
            cal = spec.awq.calibration
            yield "spec.awq.calibration.datasetUri", cal.dataset_uri, cal.token_secret_ref
        gate = spec.quality_gate
        if gate is not None:
            yield "spec.qualityGate.evalDatasetUri", gate.eval_dataset_uri, gate.token_secret_ref
    elif isinstance(spec, InferenceServiceSpec):
        yield "spec.model.uri", spec.model.uri, spec.model.token_secret_ref
        for i, a in enumerate(spec.lora.adapters if spec.lora else []):
            yield f"spec.lora.adapters[{i}].uri", a.uri, a.token_secret_ref


def check_credentials(spec: BaseModel, config: OperatorConfig) -> list[Problem]:
    """Every s3:// URI of the spec without a tokenSecretRef, unless the operator config allows ambient
    credentials (reason NotAllowed, naming the field). An output left unset goes to the operator's artifact
    root: when that is s3://, the spec must name an output with a Secret (or ambient credentials be allowed)."""
    if config.allow_ambient_credentials:
        return []
    problems: list[Problem] = []
    for field, uri, secret in _sources(spec):
        problem = check_source_credentials(field, uri, secret, config)
        if problem is not None:
            problems.append(problem)
    if isinstance(spec, FineTunedModelSpec | QuantizationJobSpec):
        output = spec.output
        if output is not None:
            problem = check_source_credentials("spec.output.uri", output.uri, output.token_secret_ref, config)
            if problem is not None:
                problems.append(problem)
        elif _is_s3(config.artifact_root):
            problems.append(
                Problem(
                    Reason.NOT_ALLOWED,
                    "spec.output",
                    f"not set, so the artifact goes to the operator's artifact root {config.artifact_root}, an "
                    "s3:// location this resource has no Secret for, and the operator config does not allow "
                    "ambient credentials: set spec.output.uri with a Secret in spec.output.tokenSecretRef, "
                    + _HOW,
                )
            )
    return problems
