"""Greedy and seeded sampling.

Every request draws from its own `torch.Generator`, seeded from `sampling_params.seed` (or a
fixed default), so the same prompt and parameters give the same tokens on every node and after
every sleep/wake cycle, however requests interleave.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_SEED = 0


class SamplingParams(BaseModel):
    """SGLang's `sampling_params`; fields this engine does not implement are ignored."""

    model_config = ConfigDict(extra="ignore")

    max_new_tokens: int = Field(default=16, ge=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        return value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: list[str]) -> list[str]:
        if any(not s for s in value):
            raise ValueError("stop strings must not be empty")
        return value


class Sampler:
    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self._temperature = params.temperature
        self._top_p = params.top_p
        seed = DEFAULT_SEED if params.seed is None else params.seed
        self._generator = torch.Generator(device=device).manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        """One token id from float32 logits of shape [vocab]."""
        if self._temperature == 0.0:
            return int(torch.argmax(logits).item())
        probs = torch.softmax(logits / self._temperature, dim=-1)
        if self._top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self._top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._generator).item())
