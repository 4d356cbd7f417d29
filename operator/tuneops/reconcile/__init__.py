"""One level-based reconciler per kind: observe -> decide -> apply -> status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuneops.reconcile import finetunedmodel, inferenceservice, quantizationjob
from tuneops.reconcile.base import Context, Outcome

RECONCILERS: dict[str, Callable[[Context, dict[str, Any]], Outcome]] = {
    "FineTunedModel": finetunedmodel.reconcile,
    "QuantizationJob": quantizationjob.reconcile,
    "InferenceService": inferenceservice.reconcile,
}
