"""Label and annotation keys the operator sets, declared once."""

from __future__ import annotations

from tuneops import GROUP

NAME = "app.kubernetes.io/name"
INSTANCE = "app.kubernetes.io/instance"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
MANAGED_BY = "app.kubernetes.io/managed-by"
VERSION = "app.kubernetes.io/version"

KIND = f"{GROUP}/kind"
OWNER = f"{GROUP}/owner"
STEP = f"{GROUP}/step"
RUNTIME = f"{GROUP}/runtime"
SPEC_HASH = f"{GROUP}/spec-hash"
MODEL_DIGEST = f"{GROUP}/model-digest"
ADAPTERS_HASH = f"{GROUP}/adapters-hash"
ROLLOUT_NOTE = f"{GROUP}/rollout"
# Set by a person on a FineTunedModel to read its adapter again (new weights under the same URI).
REFRESH = f"{GROUP}/refresh"
# Where earlier releases kept adapter memory on serving Pods (writable by anyone who may patch Pods); no longer
# written or read: tests check the operator leaves it alone.
ADAPTER_MEMORY = f"{GROUP}/adapters"
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

FIELD_MANAGER = "tuneops"
FINALIZER = f"{GROUP}/finalizer"
MANAGED_BY_VALUE = "tuneops"
