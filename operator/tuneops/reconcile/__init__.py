"""One level-based reconciler per kind: observe -> decide -> apply -> status."""

from __future__ import annotations

from tuneops.reconcile import finetunedmodel, inferenceservice, loraadapter, quantizationjob
from tuneops.reconcile.base import Reconcile

RECONCILERS: dict[str, Reconcile] = {
    "FineTunedModel": finetunedmodel.reconcile,
    "QuantizationJob": quantizationjob.reconcile,
    "InferenceService": inferenceservice.reconcile,
    "LoRAAdapter": loraadapter.reconcile,
}
