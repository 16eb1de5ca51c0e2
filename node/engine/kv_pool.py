"""The KV pool: one tensor preallocated at load time inside the `kv_cache` region.

Layout `[layers, 2 (keys, values), slots, slot_tokens, heads, head_dim]`; a request holds one
slot from its prefill to its last token (on a prefill node, until its KV is handed off).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVSlot:
    index: int
    keys: torch.Tensor  # [layers, slot_tokens, heads, head_dim]
    values: torch.Tensor


class KVPool:
    def __init__(
        self,
        flat: torch.Tensor,
        layers: int,
        slots: int,
        slot_tokens: int,
        heads: int,
        head_dim: int,
    ) -> None:
        self.slots = slots
        self.slot_tokens = slot_tokens
        self.cache = flat.view(layers, 2, slots, slot_tokens, heads, head_dim)
        self._free = list(range(slots))
        self._available = asyncio.Semaphore(slots)

    @staticmethod
    def numel(layers: int, slots: int, slot_tokens: int, heads: int, head_dim: int) -> int:
        return layers * 2 * slots * slot_tokens * heads * head_dim

    async def acquire(self) -> KVSlot:
        """The lowest free slot, waiting while every slot is taken."""
        await self._available.acquire()
        self._free.sort()
        return self.slot(self._free.pop(0))

    def free(self, slot: KVSlot) -> None:
        self._free.append(slot.index)
        self._available.release()

    def slot(self, index: int) -> KVSlot:
        return KVSlot(index=index, keys=self.cache[:, 0, index], values=self.cache[:, 1, index])

    def export(self, slot: KVSlot, length: int) -> torch.Tensor:
        """The slot's first `length` positions, on CPU: `[layers, 2, length, heads, dim]`."""
        return self.cache[:, :, slot.index, :length].to("cpu", copy=True).contiguous()

    def install(self, slot: KVSlot, kv: torch.Tensor) -> None:
        """Write KV exported by `export` (possibly on another node) into `slot`."""
        self.cache[:, :, slot.index, : kv.shape[2]].copy_(kv)

    def clear(self) -> None:
        """Zero every slot no request holds: the whole pool when none is in use. A request
        frozen by an in-place pause keeps its KV across a weight update's flush."""
        if len(self._free) == self.slots:
            self.cache.zero_()
            return
        for index in self._free:
            self.cache[:, :, index].zero_()
