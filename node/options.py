"""Everything a node is started with, validated once.

`NodeOptions` is what the CLI builds and `node.server.serve` takes. The model's shape is
resolved from `model_size` (a preset or a weights budget such as "16g") into a `ModelShape`,
and explicit `layers` / `width` / `heads` override the preset.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from node.engine.tokenizer import VOCAB_SIZE
from node.faults.rules import parse_rule
from pdfleet.vocabulary import ADMIN_TOKEN_ENV, Role

Device = Literal["cpu", "cuda"]
MemoryBackendName = Literal["auto", "torch_memory_saver", "cpu", "none"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_BOOTSTRAP_PORT = 8998


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


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


class NodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Role.MIXED
    host: str = "127.0.0.1"
    port: int = Field(default=30000, ge=0, le=65535)
    device: Device = "cpu"
    memory_backend: MemoryBackendName = "auto"
    bootstrap_port: int | None = Field(default=None, ge=0, le=65535)

    model: str | None = Field(default=None, description="safetensors file with the weights")
    model_size: str = "tiny"
    layers: int | None = Field(default=None, ge=1)
    width: int | None = Field(default=None, ge=8)
    heads: int | None = Field(default=None, ge=1)
    dtype: DtypeName = "auto"
    seed: int = 0

    kv_cache_tokens: int = Field(default=8192, ge=16)
    kv_slots: int = Field(default=8, ge=1)

    kv_handoff_timeout_s: float = Field(default=30.0, gt=0)
    kv_ttl_s: float = Field(default=60.0, gt=0)
    drain_timeout_s: float = Field(default=30.0, ge=0)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    admin_token: str | None = Field(default_factory=lambda: os.environ.get(ADMIN_TOKEN_ENV) or None)
    enable_fault_injection: bool = False
    faults: list[str] = Field(default_factory=list)
    log_level: str = "warning"

    @model_validator(mode="after")
    def _check(self) -> NodeOptions:
        if self.role == "prefill" and self.bootstrap_port is None:
            self.bootstrap_port = DEFAULT_BOOTSTRAP_PORT
        if self.role == "prefill" and self.bootstrap_port == self.port:
            raise ValueError("bootstrap_port must differ from port")
        if self.faults and not self.enable_fault_injection:
            raise ValueError("fault rules need enable_fault_injection")
        for rule in self.faults:
            parse_rule(rule)  # a malformed rule stops the node at start, naming the key
        shape = self.model_shape  # raises on an unknown model_size
        if shape.width % shape.heads or shape.head_dim % 2:
            raise ValueError(f"width {shape.width} must split into {shape.heads} even-sized heads")
        if self.kv_cache_tokens // self.kv_slots < 16:
            raise ValueError("kv_cache_tokens / kv_slots must leave at least 16 tokens a slot")
        return self

    @property
    def torch_dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.device == "cuda" else "float32"

    @property
    def slot_tokens(self) -> int:
        return self.kv_cache_tokens // self.kv_slots

    @property
    def model_shape(self) -> ModelShape:
        base = _shape_for_size(self.model_size, self.torch_dtype_name)
        return ModelShape(
            layers=self.layers or base.layers,
            width=self.width or base.width,
            heads=self.heads or base.heads,
        )

    @property
    def model_name(self) -> str:
        if self.model:
            return os.path.splitext(os.path.basename(self.model))[0]
        return f"pdfleet-{self.model_size}"


def _shape_for_size(model_size: str, dtype: str) -> ModelShape:
    if model_size in PRESETS:
        return PRESETS[model_size]
    match = _BUDGET_PATTERN.match(model_size.lower())
    if not match:
        known = ", ".join(PRESETS)
        raise ValueError(f"model_size {model_size!r}: use one of {known} or a budget like '16g'")
    budget = float(match.group(1)) * 2**30
    one_layer = ModelShape(layers=1, width=_BUDGET_WIDTH, heads=_BUDGET_HEADS)
    layer_bytes = (one_layer.weight_count() - 2 * VOCAB_SIZE * _BUDGET_WIDTH) * dtype_bytes(dtype)
    layers = max(1, round(budget / layer_bytes))
    return ModelShape(layers=layers, width=_BUDGET_WIDTH, heads=_BUDGET_HEADS)
