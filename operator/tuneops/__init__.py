"""tuneops: a Kubernetes operator that takes a fine-tuned LLM from base model + LoRA adapter to an endpoint."""

__version__ = "0.1.0"

GROUP = "tuneops.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
