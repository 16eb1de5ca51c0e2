"""The one interface every memory backend implements.

A backend owns the memory of each tagged region: the engine asks it for one flat tensor per
tag at load time (`allocate`) and lays its weights or KV pool out as views into it. Release
and resume then act on the whole region while every view stays a valid tensor object.

Callers must not release a released region or resume a resident one; `MemoryController`
guarantees this (torch_memory_saver would exit the process), and the checks here turn a
broken guarantee into an exception instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

import torch

from node.memory.meter import MemoryReading, read_memory
from node.memory.tags import MemoryTag


class RegionState(Enum):
    RESIDENT = "resident"
    RELEASED = "released"


@dataclass
class Region:
    tag: MemoryTag
    tensor: torch.Tensor
    state: RegionState = RegionState.RESIDENT

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


@dataclass(frozen=True)
class RegionStats:
    bytes: int
    state: RegionState


@dataclass(frozen=True)
class BackendStats:
    backend: str
    enabled: bool
    regions: dict[MemoryTag, RegionStats]
    reading: MemoryReading


class BackendDisabledError(RuntimeError):
    """The node runs without a memory saver: nothing can be released."""


class MemoryBackend(ABC):
    name: str
    enabled: bool = True
    # Head room a resume keeps free beyond the region sizes, so that it cannot run the device
    # out of memory part-way.
    resume_margin_bytes: int = 0

    def __init__(self, device: str) -> None:
        self.device = device
        self._regions: dict[MemoryTag, Region] = {}

    def allocate(self, tag: MemoryTag, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """The region's single flat tensor; contents are uninitialised."""
        if tag in self._regions:
            raise ValueError(f"region {tag.value} is already allocated")
        tensor = self._allocate(tag, numel, dtype)
        self._regions[tag] = Region(tag=tag, tensor=tensor)
        return tensor

    def holds_memory(self, tag: MemoryTag) -> bool:
        return tag in self._regions

    def region_bytes(self, tag: MemoryTag) -> int:
        return self._regions[tag].nbytes

    def release(self, tag: MemoryTag) -> None:
        region = self._region_in(tag, RegionState.RESIDENT)
        self._release(region)
        region.state = RegionState.RELEASED

    def resume(self, tag: MemoryTag) -> None:
        region = self._region_in(tag, RegionState.RELEASED)
        self._resume(region)
        region.state = RegionState.RESIDENT

    def stats(self) -> BackendStats:
        return BackendStats(
            backend=self.name,
            enabled=self.enabled,
            regions={
                tag: RegionStats(bytes=region.nbytes, state=region.state)
                for tag, region in self._regions.items()
            },
            reading=read_memory(self.device),
        )

    def _region_in(self, tag: MemoryTag, state: RegionState) -> Region:
        if not self.enabled:
            raise BackendDisabledError(f"memory backend {self.name} cannot release memory")
        region = self._regions.get(tag)
        if region is None:
            raise ValueError(f"no memory is allocated for tag {tag.value}")
        if region.state is not state:
            raise RuntimeError(
                f"region {tag.value} is {region.state.value}, expected {state.value}"
            )
        return region

    @abstractmethod
    def _allocate(self, tag: MemoryTag, numel: int, dtype: torch.dtype) -> torch.Tensor: ...

    @abstractmethod
    def _release(self, region: Region) -> None: ...

    @abstractmethod
    def _resume(self, region: Region) -> None: ...
