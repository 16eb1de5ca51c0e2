"""Cluster control: release, resume and flush on every node (SPEC 3.1), in SGLang's shape
(`/release_memory_occupation` with `{"tags": [...]}`) and in vLLM's (`/sleep?level=&mode=`,
`/wake_up?tags=`, `GET /is_sleeping`), so clients written for either engine can point here
(SPEC 9). The control body's shape is checked here, before any node is called.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import Operation, Role
from router.fanout import ControlRequest, OperationInProgress
from router.routes import schemas
from router.state import State

router = APIRouter()

ALIASES = {
    "release_memory_occupation": Operation.RELEASE,
    "sleep": Operation.RELEASE,
    "resume_memory_occupation": Operation.RESUME,
    "wake_up": Operation.RESUME,
    "flush_cache": Operation.FLUSH,
}
LEVELS = ("1", "2")
MODES = ("abort", "wait")


def _bad(message: str) -> HTTPException:
    return HTTPException(400, detail=message)


def _parse_body(body: bytes) -> dict[str, Any] | None:
    """The control body as a JSON object (None when empty), with `tags` null or a non-empty
    list of strings and `drain` one of the modes."""
    if not body.strip():
        return None
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise _bad(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _bad("request body must be a JSON object")
    tags = payload.get("tags")
    if tags is not None and (
        not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags)
    ):
        raise _bad(f"tags must be null or a non-empty list of strings, got {tags!r}")
    drain = payload.get("drain")
    if "drain" in payload and drain not in MODES:
        raise _bad(f"drain must be one of {', '.join(MODES)}; got {drain!r}")
    return payload


def _query_tags(query: QueryParams) -> list[str] | None:
    """vLLM's `?tags=weights&tags=kv_cache`; a comma list works too. None: no tags given."""
    values = query.getlist("tags")
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise _bad("tags in the query must name at least one tag")
    return names


def _choice(query: QueryParams, name: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in choices:
        raise _bad(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _parse_timeout(raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= 86400):
        raise _bad(f"timeout must be seconds in (0, 86400], got {raw!r}")
    return value


def _parse_role(raw: str | None) -> Role | None:
    if raw is None:
        return None
    try:
        return Role(raw)
    except ValueError:
        raise _bad(f"role must be one of prefill, decode, mixed; got {raw!r}") from None


def _parse_rollback(raw: str | None, operation: str) -> bool:
    if raw is None:
        return False
    if raw != "rollback":
        raise _bad(f"on_failure must be 'rollback', got {raw!r}")
    if operation != Operation.RELEASE:
        raise _bad("on_failure=rollback applies to release only")
    return True


def _merge_tags(payload: dict[str, Any] | None, query: QueryParams) -> dict[str, Any]:
    """The query's tags as body fields; a body that names other tags → 400."""
    tags = _query_tags(query)
    if tags is None:
        return {}
    if payload is not None and "tags" in payload:
        body_tags = payload["tags"]
        if body_tags is None or set(body_tags) != set(tags):
            raise _bad(f"the query's tags {tags} and the body's tags {body_tags} disagree")
    return {"tags": tags}


def _merge_mode(payload: dict[str, Any] | None, query: QueryParams) -> dict[str, Any]:
    """vLLM's `?mode=abort|wait` as the `drain` field pdfleet nodes read; 400 on conflict."""
    mode = _choice(query, "mode", MODES)
    if mode is None:
        return {}
    drain = (payload or {}).get("drain")
    if drain is not None and drain != mode:
        raise _bad(f"the query's mode {mode!r} and the body's drain {drain!r} disagree")
    return {"drain": mode}


async def control(request: Request, state: State) -> JSONResponse:
    state.admin(request)
    operation = ALIASES[request.url.path.rsplit("/", 1)[-1]]
    raw = await request.body()
    payload = _parse_body(raw)
    query = request.query_params
    fields: dict[str, Any] = {}
    level = 1
    if operation in (Operation.RELEASE, Operation.RESUME):
        fields.update(_merge_tags(payload, query))
    if operation == Operation.RELEASE:
        level = int(_choice(query, "level", LEVELS) or 1)
        fields.update(_merge_mode(payload, query))
    # The body goes to SGLang-speaking nodes verbatim unless the query added to it.
    merged = {**(payload or {}), **fields}
    body = json.dumps(merged).encode() if fields else raw
    control_request = ControlRequest(
        operation=operation,
        body=body,
        content_type="application/json" if fields else request.headers.get("content-type"),
        tags=merged.get("tags"),
        role=_parse_role(query.get("role")),
        timeout_s=_parse_timeout(query.get("timeout"), state.settings.control_timeout_s),
        rollback=_parse_rollback(query.get("on_failure"), operation),
        authorization=request.headers.get("authorization"),
        level=level,
        mode=merged.get("drain") if operation == Operation.RELEASE else None,
    )
    try:
        report = await state.peers.run_control(state.control, control_request)
    except OperationInProgress as exc:
        raise HTTPException(409, detail=str(exc)) from None
    status, reply = report.reply()
    return JSONResponse(reply, status_code=status)


for _path, _operation in ALIASES.items():
    router.add_api_route(f"/{_path}", control, methods=["POST"], name=_path,
                         **schemas.control_route(_operation))


@router.get("/is_sleeping", response_model=schemas.SleepState)
async def is_sleeping(state: State) -> schemas.SleepState:
    """vLLM's `GET /is_sleeping` for the whole fleet: asleep when any node has released
    memory; `all_sleeping` when every node has."""
    nodes = state.registry.all()
    return schemas.SleepState(
        is_sleeping=any(n.sleeping for n in nodes),
        all_sleeping=bool(nodes) and all(n.sleeping for n in nodes),
        nodes=[
            schemas.NodeSleep(
                server=n.url,
                released_tags=sorted(n.released_tags) if n.sleep_state_known else None,
            )
            for n in nodes
        ],
    )
