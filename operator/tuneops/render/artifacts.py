"""Where a resource's artifact lands when its spec names no place, and which file of an artifact is used."""

from __future__ import annotations

from collections.abc import Sequence

from tuneops.api import KINDS
from tuneops.config import OperatorConfig
from tuneops.render.types import Owner


def default_output_uri(config: OperatorConfig, owner: Owner) -> str:
    """`<root>/<namespace>/<plural>/<name>`: the kind keeps a FineTunedModel and a QuantizationJob of the same
    name from writing over each other's artifact."""
    info = KINDS.get(owner.kind)
    plural = info.plural if info is not None else owner.kind.lower()
    return f"{config.artifact_root.rstrip('/')}/{owner.namespace}/{plural}/{owner.name}"


def gguf_file(files: Sequence[str], gguf_type: str | None) -> str | None:
    """The GGUF file of a quantization type among an artifact's files (the first .gguf when no type is asked)."""
    # The artifact lists its files in the order of spec.gguf.quantTypes: no type asked means the first one.
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if gguf_type is None:
        return ggufs[0] if ggufs else None
    want = gguf_type.lower()
    exact = [f for f in ggufs if f.lower().removesuffix(".gguf").endswith(want)]
    if exact:
        return exact[0]
    loose = [f for f in ggufs if want in f.lower()]
    return loose[0] if len(loose) == 1 else None
