"""Cluster control: release, resume and flush on every node (SPEC 3.1)."""

from __future__ import annotations

import json
import math

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from router.config import Role
from router.fanout import ControlRequest, OperationInProgress
from router.state import State

router = APIRouter()

ALIASES = {
    "release_memory_occupation": "release_memory_occupation",
    "sleep": "release_memory_occupation",
    "resume_memory_occupation": "resume_memory_occupation",
    "wake_up": "resume_memory_occupation",
    "flush_cache": "flush_cache",
}


def _parse_tags(body: bytes) -> list[str] | None:
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise HTTPException(400, detail=f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise HTTPException(400, detail="request body must be a JSON object")
    tags = payload.get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else None


def _parse_timeout(raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= 86400):
        raise HTTPException(400, detail=f"timeout must be seconds in (0, 86400], got {raw!r}")
    return value


def _parse_role(raw: str | None) -> Role | None:
    if raw is None:
        return None
    try:
        return Role(raw)
    except ValueError:
        raise HTTPException(
            400, detail=f"role must be one of prefill, decode, mixed; got {raw!r}"
        ) from None


def _parse_rollback(raw: str | None, operation: str) -> bool:
    if raw is None:
        return False
    if raw != "rollback":
        raise HTTPException(400, detail=f"on_failure must be 'rollback', got {raw!r}")
    if operation != "release_memory_occupation":
        raise HTTPException(400, detail="on_failure=rollback applies to release only")
    return True


async def control(request: Request, state: State) -> JSONResponse:
    state.admin(request)
    operation = ALIASES[request.url.path.rsplit("/", 1)[-1]]
    body = await request.body()
    query = request.query_params
    control_request = ControlRequest(
        operation=operation,
        body=body,
        content_type=request.headers.get("content-type"),
        tags=_parse_tags(body),
        role=_parse_role(query.get("role")),
        timeout_s=_parse_timeout(query.get("timeout"), state.settings.control_timeout_s),
        rollback=_parse_rollback(query.get("on_failure"), operation),
        authorization=request.headers.get("authorization"),
    )
    try:
        report = await state.peers.run_control(state.control, control_request)
    except OperationInProgress as exc:
        raise HTTPException(409, detail=str(exc)) from None
    status, payload = report.reply()
    return JSONResponse(payload, status_code=status)


for _path in ALIASES:
    router.add_api_route(f"/{_path}", control, methods=["POST"], name=_path)
