"""Bodies of the refit routes, defined once: what clients send and what the node answers.

Field names are SGLang's, so a trainer written against SGLang drives this node unchanged.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from node.admission import PauseMode

_VERSION_CHARACTERS = frozenset(chr(code) for code in range(0x21, 0x7F))
_VERSION_MAX = 200


def _check_version(version: str) -> str:
    if not version or len(version) > _VERSION_MAX or not set(version) <= _VERSION_CHARACTERS:
        raise ValueError(
            f"{version!r} is not a weight version: it travels in an HTTP header, so it is 1 to "
            f"{_VERSION_MAX} printable ASCII characters without spaces")
    return version


WeightVersion = Annotated[str, AfterValidator(_check_version)]


class _Body(BaseModel):
    # Routers forward SGLang bodies verbatim; fields this node does not use are ignored.
    model_config = ConfigDict(extra="ignore")


class WeightUpdate(_Body):
    """What every weight update takes besides where the weights come from."""

    weight_version: WeightVersion | None = Field(
        default=None, description="the version after the update (default: kept)")
    abort_all_requests: bool = False
    flush_cache: bool = True
    drain_timeout_s: float | None = Field(default=None, ge=0)


class UpdateFromDiskRequest(WeightUpdate):
    model_path: str = Field(min_length=1)
    load_format: str | None = None


class UpdateFromDistributedRequest(WeightUpdate):
    names: list[str] = Field(min_length=1)
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = Field(default="weight_update_group", min_length=1)


class InitGroupRequest(_Body):
    master_address: str = Field(min_length=1)
    master_port: int = Field(ge=1, le=65535)
    rank_offset: int = Field(ge=1, description="this node's rank; the trainer is rank 0")
    world_size: int = Field(ge=2)
    group_name: str = Field(default="weight_update_group", min_length=1)
    backend: Literal["gloo", "nccl"] | None = Field(
        default=None, description="default: nccl on CUDA, gloo on CPU")
    timeout_s: float = Field(default=60.0, gt=0, le=3600)


class DestroyGroupRequest(_Body):
    group_name: str = Field(default="weight_update_group", min_length=1)


class UpdateVersionRequest(_Body):
    new_version: WeightVersion
    abort_all_requests: bool = False


class PauseRequest(_Body):
    mode: PauseMode = PauseMode.ABORT
    # mode=wait: how long to wait for running requests (default: the node's drain timeout).
    timeout_s: float | None = Field(default=None, ge=0)


class WeightUpdateReport(BaseModel):
    success: bool = True
    message: str
    weight_version: str
    bytes: int
    elapsed_ms: float
    # The copy alone, without the drain: what the transfer itself achieved.
    copy_ms: float
    copy_gbps: float
    drained_requests: int
    # Requests frozen by an in-place pause: they go on with these weights after continue.
    frozen_requests: int
    flushed_cache: bool


class GroupReport(BaseModel):
    success: bool = True
    message: str
    group_name: str
    rank: int
    world_size: int
    backend: str
    elapsed_ms: float


class WeightVersionReport(BaseModel):
    success: bool = True
    message: str
    weight_version: str
    aborted: int


class PauseReport(BaseModel):
    success: bool = True
    message: str
    paused: bool
    mode: PauseMode | None
    # abort: requests ended; in_place: requests that stop at their next step; wait: requests
    # the pause waited for.
    aborted: int = 0
    frozen: int = 0
    waited_for: int = 0
    already_paused: bool = False


class ContinueReport(BaseModel):
    success: bool = True
    message: str
    paused: bool = False
    resumed_frozen: int = 0
    already_running: bool = False
