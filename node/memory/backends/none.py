"""No memory saver: regions are plain tensors and every control request fails closed."""

from __future__ import annotations

import torch

from node.memory.backends.base import MemoryBackend, Region
from node.memory.tags import MemoryTag


class DisabledBackend(MemoryBackend):
    name = "none"
    enabled = False

    def _allocate(self, tag: MemoryTag, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype, device=self.device)

    def _release(self, region: Region) -> None:
        raise AssertionError("unreachable: MemoryBackend refuses to release when disabled")

    def _resume(self, region: Region) -> None:
        raise AssertionError("unreachable: MemoryBackend refuses to resume when disabled")
