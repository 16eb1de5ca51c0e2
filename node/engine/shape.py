"""The transformer's shape: a preset by name, or a layer count chosen to fill a weights budget.

The engine is built from a `ModelShape`; how a person names one (`--model-size tiny`, `16g`)
is resolved here, so nothing below the CLI needs the node's options.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from node.engine.tokenizer import VOCAB_SIZE


@dataclass(frozen=True)
class ModelShape:
    layers: int
    width: int
    heads: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def mlp_width(self) -> int:
        return 4 * self.width

    def weight_count(self, vocab: int = VOCAB_SIZE) -> int:
        per_layer = 2 * self.width + 4 * self.width**2 + 2 * self.width * self.mlp_width
        return 2 * vocab * self.width + self.width + self.layers * per_layer


# "tiny" generates tens of tokens in well under a second on two CPU cores while its weights
# (~12 MiB in fp32) are big enough that releasing them visibly lowers process RSS.
PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(layers=4, width=256, heads=4),
    "small": ModelShape(layers=8, width=512, heads=8),
}

# Multi-GiB sizes ("4g", "16g") keep a realistic layer width and choose the layer count.
_BUDGET_WIDTH = 4096
_BUDGET_HEADS = 32
_BUDGET_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)g$")


def shape_for_size(model_size: str, bytes_per_weight: int) -> ModelShape:
    """A preset's shape, or the layers that fill a budget such as "16g" at that weight size."""
    if model_size in PRESETS:
        return PRESETS[model_size]
    match = _BUDGET_PATTERN.match(model_size.lower())
    if not match:
        known = ", ".join(PRESETS)
        raise ValueError(f"model_size {model_size!r}: use one of {known} or a budget like '16g'")
    budget = float(match.group(1)) * 2**30
    one_layer = ModelShape(layers=1, width=_BUDGET_WIDTH, heads=_BUDGET_HEADS)
    layer_bytes = (one_layer.weight_count() - 2 * VOCAB_SIZE * _BUDGET_WIDTH) * bytes_per_weight
    layers = max(1, round(budget / layer_bytes))
    return ModelShape(layers=layers, width=_BUDGET_WIDTH, heads=_BUDGET_HEADS)
