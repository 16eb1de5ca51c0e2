"""Memory control routes: SGLang's release/resume/flush and vLLM's sleep/wake_up aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from node.http.body import read_body, require_admin
from node.memory.messages import (
    FlushReport,
    ReleaseReport,
    ReleaseRequest,
    ResumeReport,
    ResumeRequest,
    SleepStatus,
)
from node.runtime import NodeRuntime
from pdfleet.vocabulary import Operation

router = APIRouter()


def _admin_runtime(request: Request) -> NodeRuntime:
    runtime: NodeRuntime = request.app.state.runtime
    require_admin(request, runtime.options.admin_token)
    return runtime


@router.post(f"/{Operation.RELEASE}")
async def release_memory_occupation(request: Request) -> ReleaseReport:
    runtime = _admin_runtime(request)
    body = await read_body(
        request, ReleaseRequest, max_bytes=runtime.options.max_body_bytes, allow_empty=True
    )
    return await runtime.metrics.operation(Operation.RELEASE, runtime.controller.release(body))


@router.post(f"/{Operation.RESUME}")
async def resume_memory_occupation(request: Request) -> ResumeReport:
    runtime = _admin_runtime(request)
    body = await read_body(
        request, ResumeRequest, max_bytes=runtime.options.max_body_bytes, allow_empty=True
    )
    return await runtime.metrics.operation(Operation.RESUME, runtime.controller.resume(body))


@router.post("/sleep")
async def sleep(request: Request, level: Annotated[int, Query(ge=1, le=2)] = 1) -> ReleaseReport:
    """vLLM's sleep: both levels release every tag (weights are always backed up here)."""
    runtime = _admin_runtime(request)
    release = runtime.controller.release(ReleaseRequest())
    return await runtime.metrics.operation(Operation.RELEASE, release)


@router.post("/wake_up")
async def wake_up(
    request: Request, tags: Annotated[list[str] | None, Query()] = None
) -> ResumeReport:
    """vLLM's wake_up: `?tags=weights&tags=kv_cache` or `?tags=weights,kv_cache`; none = all."""
    runtime = _admin_runtime(request)
    names = [name for value in tags or [] for name in value.split(",") if name]
    body = ResumeRequest.model_validate({"tags": names if tags else None})
    return await runtime.metrics.operation(Operation.RESUME, runtime.controller.resume(body))


@router.post(f"/{Operation.FLUSH}")
async def flush_cache(request: Request) -> FlushReport:
    runtime = _admin_runtime(request)
    return await runtime.metrics.operation(Operation.FLUSH, runtime.controller.flush_cache())


@router.get("/is_sleeping")
async def is_sleeping(request: Request) -> SleepStatus:
    runtime: NodeRuntime = request.app.state.runtime
    released = runtime.controller.released_tags
    return SleepStatus(is_sleeping=bool(released), released_tags=released)
