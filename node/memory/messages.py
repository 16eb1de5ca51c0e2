"""Bodies of the memory routes, defined once: what clients send and what the node answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from node.memory.backends.base import BackendStats
from node.memory.tags import MemoryTag, parse_tags


class _TagsRequest(BaseModel):
    # Routers forward SGLang bodies verbatim; fields this node does not use are ignored.
    model_config = ConfigDict(extra="ignore")

    tags: list[MemoryTag] | None = None

    @field_validator("tags", mode="before")
    @classmethod
    def _valid_tags(cls, value: Any) -> list[MemoryTag] | None:
        return parse_tags(value)


class ReleaseRequest(_TagsRequest):
    drain: Literal["wait", "abort"] = "wait"
    drain_timeout_s: float | None = Field(default=None, ge=0)


class ResumeRequest(_TagsRequest):
    pass


class RegionInfo(BaseModel):
    bytes: int
    state: str


class MemoryInfo(BaseModel):
    """This node's memory as measured now, with each region's size and state."""

    used_bytes: int
    free_bytes: int
    total_bytes: int
    measured_as: str
    # Which memory `total_bytes` is: nodes sharing a GPU or a host's RAM name the same pool.
    pool: str
    regions: dict[str, RegionInfo]

    @classmethod
    def of(cls, stats: BackendStats) -> MemoryInfo:
        reading = stats.reading
        return cls(
            used_bytes=reading.used_bytes,
            free_bytes=reading.free_bytes,
            total_bytes=reading.total_bytes,
            measured_as=reading.measured_as,
            pool=reading.pool,
            regions={tag.value: RegionInfo(bytes=r.bytes, state=r.state.value)
                     for tag, r in stats.regions.items()},
        )


class ReleaseReport(BaseModel):
    success: bool = True
    released: list[MemoryTag]
    already_released: list[MemoryTag]
    # Accepted tags that hold no memory on this node (e.g. cuda_graph): nothing to do.
    noop_tags: list[MemoryTag]
    released_tags: list[MemoryTag]
    # What was released, exact: the sizes of the regions in `released`.
    released_bytes: int
    # What the process measured before minus after (see `measured_as`): the allocator returns
    # or keeps pages on its own schedule, so on CPU this may be 0 or more than released.
    freed_bytes: int
    drained_requests: int
    elapsed_ms: float
    # The memory after the operation: a router records it with `released_tags`, so its view
    # never shows new tags beside regions and memory from before, and needs no extra poll.
    memory: MemoryInfo


class ResumeReport(BaseModel):
    success: bool = True
    resumed: list[MemoryTag]
    already_resumed: list[MemoryTag]
    noop_tags: list[MemoryTag]
    released_tags: list[MemoryTag]
    # The sizes of the regions in `resumed`, exact; `restored_bytes` is the measured change.
    resumed_bytes: int
    restored_bytes: int
    elapsed_ms: float
    memory: MemoryInfo


class FlushReport(BaseModel):
    success: bool = True
    message: str
    elapsed_ms: float
    memory: MemoryInfo


class SleepStatus(BaseModel):
    is_sleeping: bool
    released_tags: list[MemoryTag]
