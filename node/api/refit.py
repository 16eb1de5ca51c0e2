"""The RL refit's routes: new weights (from disk, or by broadcast over a weights update
group), the weight version, and pausing generation around an update. SGLang's names and
bodies, so a trainer written for SGLang drives this node unchanged."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request

from node.errors import GroupJoinFailed
from node.http.body import read_body, read_json_object, require_admin
from node.refit.group import Broadcast, join_group
from node.refit.messages import (
    ContinueReport,
    DestroyGroupRequest,
    GroupReport,
    InitGroupRequest,
    PauseReport,
    PauseRequest,
    UpdateFromDiskRequest,
    UpdateFromDistributedRequest,
    UpdateVersionRequest,
    WeightUpdateReport,
    WeightVersionReport,
)
from node.refit.pause import continue_generation, pause_generation
from node.runtime import NodeRuntime
from pdfleet.vocabulary import Operation

router = APIRouter()


def _runtime(request: Request) -> NodeRuntime:
    runtime: NodeRuntime = request.app.state.runtime
    require_admin(request, runtime.options.admin_token)
    return runtime


@router.get("/get_weight_version")
async def get_weight_version(request: Request) -> dict[str, str | None]:
    runtime: NodeRuntime = request.app.state.runtime
    return {"weight_version": runtime.controller.weight_version}


@router.get("/model_info")
async def model_info(request: Request) -> dict[str, Any]:
    """SGLang's model_info: what is served, and by which weights."""
    runtime: NodeRuntime = request.app.state.runtime
    options = runtime.options
    return {
        "model_path": options.model or options.model_name,
        "tokenizer_path": None,
        "is_generation": True,
        "weight_version": runtime.controller.weight_version,
    }


@router.post("/update_weight_version")
async def update_weight_version(request: Request) -> WeightVersionReport:
    runtime = _runtime(request)
    body = await read_body(request, UpdateVersionRequest,
                           max_bytes=runtime.options.max_body_bytes)
    aborted = runtime.controller.set_weight_version(
        body.new_version, abort_all_requests=body.abort_all_requests)
    return WeightVersionReport(message=f"weight version is now {body.new_version}",
                               weight_version=body.new_version, aborted=aborted)


@router.post(f"/{Operation.UPDATE_FROM_DISK}")
async def update_weights_from_disk(request: Request) -> WeightUpdateReport:
    runtime = _runtime(request)
    body = await read_body(request, UpdateFromDiskRequest,
                           max_bytes=runtime.options.max_body_bytes)
    with runtime.weights_from_disk(body.model_path, body.load_format) as source:
        update = runtime.controller.update_weights(Operation.UPDATE_FROM_DISK, body, source)
        return await runtime.metrics.operation(Operation.UPDATE_FROM_DISK, update)


@router.post(f"/{Operation.INIT_WEIGHTS_GROUP}")
async def init_weights_update_group(request: Request) -> GroupReport:
    runtime = _runtime(request)
    body = await read_body(request, InitGroupRequest, max_bytes=runtime.options.max_body_bytes)
    backend = body.backend or ("nccl" if runtime.options.device == "cuda" else "gloo")
    started = time.perf_counter()
    runtime.groups.reserve(body.group_name)
    try:
        # The rendezvous blocks until every rank has joined: off the event loop, and bounded
        # by the group's own timeout (plus a margin for the store's connection).
        group = await asyncio.wait_for(
            asyncio.to_thread(
                join_group, body.master_address, body.master_port, body.rank_offset,
                body.world_size, body.group_name, backend, body.timeout_s),
            body.timeout_s + 10,
        )
    except Exception as error:
        runtime.groups.unreserve(body.group_name)
        raise GroupJoinFailed(
            f"could not join weights update group {body.group_name!r} at "
            f"{body.master_address}:{body.master_port} as rank {body.rank_offset} of "
            f"{body.world_size} within {body.timeout_s:g}s: {type(error).__name__}: {error}",
            group_name=body.group_name) from None
    runtime.groups.joined(group)
    return GroupReport(
        message=f"joined {body.group_name} as rank {group.rank} of {group.world_size}",
        group_name=group.name, rank=group.rank, world_size=group.world_size,
        backend=group.backend, elapsed_ms=round((time.perf_counter() - started) * 1000, 3))


@router.post("/destroy_weights_update_group")
async def destroy_weights_update_group(request: Request) -> dict[str, Any]:
    runtime = _runtime(request)
    body = await read_body(request, DestroyGroupRequest,
                           max_bytes=runtime.options.max_body_bytes)
    # Off the event loop: tearing down a communicator talks to the other ranks.
    await asyncio.to_thread(runtime.groups.destroy, body.group_name)
    return {"success": True, "message": f"destroyed {body.group_name}",
            "group_name": body.group_name}


@router.post(f"/{Operation.UPDATE_FROM_DISTRIBUTED}")
async def update_weights_from_distributed(request: Request) -> WeightUpdateReport:
    runtime = _runtime(request)
    body = await read_body(request, UpdateFromDistributedRequest,
                           max_bytes=runtime.options.max_body_bytes)
    source = Broadcast(runtime.groups, body.group_name, body.names, body.dtypes, body.shapes,
                       runtime.weights)
    update = runtime.controller.update_weights(Operation.UPDATE_FROM_DISTRIBUTED, body, source)
    return await runtime.metrics.operation(Operation.UPDATE_FROM_DISTRIBUTED, update)


@router.post(f"/{Operation.PAUSE}")
async def pause(request: Request) -> PauseReport:
    runtime = _runtime(request)
    body = await read_body(request, PauseRequest, max_bytes=runtime.options.max_body_bytes,
                           allow_empty=True)
    timeout_s = runtime.options.drain_timeout_s if body.timeout_s is None else body.timeout_s
    return await pause_generation(runtime.admission, body.mode, timeout_s)


@router.post(f"/{Operation.CONTINUE}")
async def continue_(request: Request) -> ContinueReport:
    runtime = _runtime(request)
    await read_json_object(request, max_bytes=runtime.options.max_body_bytes, allow_empty=True)
    return continue_generation(runtime.admission)
