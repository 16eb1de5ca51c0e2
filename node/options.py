"""Everything a node is started with, validated once.

`NodeOptions` is what the command line builds (`node.cli`, one flag per field, its help
the field's description) and `node.server.serve` takes. The model's shape is resolved from
`model_size` (a preset or a weights budget such as "16g"), and explicit `layers` / `width` /
`heads` override it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from node.engine.shape import PRESETS, ModelShape, shape_for_size
from node.faults.rules import FaultRule, parse_rule
from node.memory.backends import BackendName
from node.refit.messages import WeightVersion
from pdfleet.vocabulary import ADMIN_TOKEN_ENV, NODE_MAX_BODY_BYTES, Role

Device = Literal["cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

DEFAULT_BOOTSTRAP_PORT = 8998


@dataclass(frozen=True)
class Flag:
    """A field's command-line flag where it is not `--` and the field's name in kebab-case
    (`name` None keeps the field off the command line), and what its value is called."""

    name: str | None
    metavar: str | None = None


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


class NodeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role = Field(default=Role.MIXED, description="what the node serves")
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=30000, ge=0, le=65535, description="port of the HTTP API")
    device: Device = Field(default="cpu", description="where the model runs")
    memory_backend: BackendName = Field(
        default="auto", description="how memory is released: auto is torch_memory_saver on "
        "CUDA, else cpu; none refuses every release")
    bootstrap_port: int | None = Field(
        default=None, ge=0, le=65535, description="prefill only: port decode nodes pull KV "
        f"from (default {DEFAULT_BOOTSTRAP_PORT})")

    model: str | None = Field(
        default=None, description="safetensors file with the weights (default: seeded init)")
    model_size: str = Field(
        default="tiny", description=f"{', '.join(PRESETS)}, or a weights budget like 16g")
    layers: int | None = Field(default=None, ge=1, description="override the size's layer count")
    width: int | None = Field(default=None, ge=8, description="override the size's layer width")
    heads: int | None = Field(default=None, ge=1, description="override the size's head count")
    dtype: DtypeName = Field(
        default="auto", description="weights and KV dtype: auto is bfloat16 on CUDA, else float32")
    seed: int = Field(default=0, description="seed of the initial weights")
    weight_version: WeightVersion = Field(
        default="default",
        description="version of the weights served, named in every generation reply")
    save_weights: str | None = Field(
        default=None, description="write the weights this node would serve to this "
        "safetensors file (what --model and update_weights_from_disk take) and exit")

    kv_cache_tokens: int = Field(default=8192, ge=16, description="tokens the KV pool holds")
    kv_slots: int = Field(default=8, ge=1, description="requests the KV pool holds at once")

    kv_handoff_timeout_s: float = Field(
        default=30.0, gt=0, description="decode only: seconds to wait for a prompt's KV")
    kv_ttl_s: float = Field(
        default=60.0, gt=0, description="prefill only: seconds KV waits to be pulled")
    drain_timeout_s: float = Field(
        default=30.0, ge=0, description="seconds a release waits for requests in flight")
    max_body_bytes: int = Field(
        default=NODE_MAX_BODY_BYTES, ge=1024, description="largest request body accepted")

    # A secret stays off the command line, where any user could read it in the process list.
    admin_token: Annotated[str | None, Flag(None)] = Field(
        default_factory=lambda: os.environ.get(ADMIN_TOKEN_ENV) or None,
        description=f"token the admin routes need (from ${ADMIN_TOKEN_ENV})")
    enable_fault_injection: bool = Field(
        default=False, description="apply --fault rules and serve /_admin/faults")
    faults: Annotated[list[FaultRule], Flag("--fault", "RULE")] = Field(
        default_factory=list, description="fault rule (repeatable), e.g. "
        "route=/flush_cache,kind=status,code=500")
    log_level: str = Field(default="warning", description="uvicorn and node log level")

    @field_validator("faults", mode="before")
    @classmethod
    def _parse_faults(cls, rules: list[Any]) -> list[Any]:
        # A malformed rule stops the node at start, naming the key.
        return [parse_rule(rule) if isinstance(rule, str) else rule for rule in rules]

    @model_validator(mode="after")
    def _check(self) -> NodeOptions:
        if self.role is Role.PREFILL and self.bootstrap_port is None:
            self.bootstrap_port = DEFAULT_BOOTSTRAP_PORT
        if self.role is Role.PREFILL and self.bootstrap_port == self.port:
            raise ValueError("bootstrap_port must differ from port")
        if self.faults and not self.enable_fault_injection:
            raise ValueError("fault rules need enable_fault_injection")
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
        base = shape_for_size(self.model_size, dtype_bytes(self.torch_dtype_name))
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
