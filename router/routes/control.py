"""Cluster control: release, resume and flush on every node, in SGLang's shape
(`/release_memory_occupation` with `{"tags": [...]}`) and in vLLM's (`/sleep?level=&mode=`,
`/wake_up?tags=`, `GET /is_sleeping`), so clients written for either engine can point here.
Each route hands its `ControlRequest` to the control plane (router/control/).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from pdfleet.vocabulary import NODE_MAX_BODY_BYTES, EngineName, Operation
from router.control.lock import OperationInProgress
from router.control.report import ControlReport
from router.control.request import BadControlRequest, control_request
from router.routes import schemas
from router.state import State

router = APIRouter()

# Each route: the operation it carries and the API it comes from.
ROUTES = {
    "release_memory_occupation": (Operation.RELEASE, EngineName.SGLANG),
    "sleep": (Operation.RELEASE, EngineName.VLLM),
    "resume_memory_occupation": (Operation.RESUME, EngineName.SGLANG),
    "wake_up": (Operation.RESUME, EngineName.VLLM),
    "flush_cache": (Operation.FLUSH, EngineName.SGLANG),
}


async def control_body(request: Request) -> bytes:
    """The body, refused with 413 once it is larger than a node accepts: every node would
    refuse it, so none is called."""
    too_large = HTTPException(413, detail=f"a control request body may be at most "
                                          f"{NODE_MAX_BODY_BYTES} bytes, what a node accepts")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > NODE_MAX_BODY_BYTES:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > NODE_MAX_BODY_BYTES:
            raise too_large
    return bytes(raw)


async def control(request: Request, state: State) -> JSONResponse:
    state.admin(request)
    operation, dialect = ROUTES[request.url.path.rsplit("/", 1)[-1]]
    raw = await control_body(request)
    try:
        control = control_request(
            operation, raw, request.query_params,
            content_type=request.headers.get("content-type"),
            authorization=request.headers.get("authorization"),
            default_timeout_s=state.settings.control_timeout_s, dialect=dialect)
    except BadControlRequest as exc:
        raise HTTPException(400, detail=str(exc)) from None
    try:
        report = await state.control.run(control)
    except OperationInProgress as exc:
        raise HTTPException(409, detail=str(exc)) from None
    if report.success:
        return JSONResponse(report.body())
    return JSONResponse({"detail": report.body()}, status_code=502)


for _path, (_operation, _) in ROUTES.items():
    router.add_api_route(f"/{_path}", control, methods=["POST"], name=_path,
                         response_model=ControlReport, **schemas.control_route(_operation))


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
