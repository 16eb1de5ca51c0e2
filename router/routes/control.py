"""Cluster control: release, resume and flush on every node, and the RL refit (pause, update
weights, continue), in SGLang's shape (`/release_memory_occupation` with `{"tags": [...]}`,
`/pause_generation {"mode"}`, ...) and in vLLM's (`/sleep?level=&mode=`, `/wake_up?tags=`,
`GET /is_sleeping`, `/pause?mode=`, `/resume`), so clients written for either engine can
point here; and `/fanout/{path}`, any other engine route on every node. Each route hands its
`ControlRequest` to the control plane (router/control/).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from starlette.convertors import Convertor, register_url_convertor
from starlette.routing import Match

from pdfleet.vocabulary import NODE_MAX_BODY_BYTES, EngineName, Operation
from router.control.lock import OperationInProgress
from router.control.report import ControlReport
from router.control.request import (
    BadControlRequest,
    ControlRequest,
    control_request,
    fanout_request,
)
from router.routes import schemas
from router.routes.generation_docs import GENERATION_ROUTES
from router.state import State

router = APIRouter()

# Each route: the operation it carries and the API it comes from.
ROUTES = {
    "release_memory_occupation": (Operation.RELEASE, EngineName.SGLANG),
    "sleep": (Operation.RELEASE, EngineName.VLLM),
    "resume_memory_occupation": (Operation.RESUME, EngineName.SGLANG),
    "wake_up": (Operation.RESUME, EngineName.VLLM),
    "flush_cache": (Operation.FLUSH, EngineName.SGLANG),
    "pause_generation": (Operation.PAUSE, EngineName.SGLANG),
    "pause": (Operation.PAUSE, EngineName.VLLM),
    "continue_generation": (Operation.CONTINUE, EngineName.SGLANG),
    "resume": (Operation.CONTINUE, EngineName.VLLM),
    "update_weights_from_disk": (Operation.UPDATE_FROM_DISK, EngineName.SGLANG),
    "init_weights_update_group": (Operation.INIT_WEIGHTS_GROUP, EngineName.SGLANG),
    "update_weights_from_distributed": (Operation.UPDATE_FROM_DISTRIBUTED, EngineName.SGLANG),
}


class AnyPath(Convertor[str]):
    """Starlette's `path` matches no line break; /fanout answers any path, a bad one 400."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())
FANOUT_ROUTE = "/fanout/{path:anypath}"
# A node route's path: printable ASCII, no spaces (422 otherwise).
FANOUT_PATH_PATTERN = r"^[!-~]+$"
# The fleet's state is the router's under these, whichever routes it has now: /fanout never
# sends them to a node (nor any path one of the router's routes matches).
ROUTER_PREFIXES = ("cluster/",)


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
    return await run(control, state)


async def fanout(path: Annotated[str, Path(pattern=FANOUT_PATH_PATTERN)], request: Request,
                 state: State) -> JSONResponse:
    """`POST /{path}` on every target node, its body and query (less the router's `timeout`,
    `role` and `engine`) as they came: any engine route the router has no route of its own
    for (LoRA adapters, update_weight_version, custom RPCs)."""
    state.admin(request)
    raw = await control_body(request)
    try:
        control = fanout_request(
            path, raw, request.query_params,
            content_type=request.headers.get("content-type"),
            authorization=request.headers.get("authorization"),
            default_timeout_s=state.settings.control_timeout_s)
        refuse_router_route(f"/{path.strip('/')}", request)
    except BadControlRequest as exc:
        raise HTTPException(400, detail=str(exc)) from None
    return await run(control, state)


def refuse_router_route(path: str, request: Request) -> None:
    """A generation route or one of the router's own (fleet state, control, its documents)
    is no node route to fan out: generation is placed on pairs, and control goes through its
    own route, where it is checked and recorded."""
    scope = {"type": "http", "path": path, "root_path": "", "method": "POST"}
    own = any(route.matches(scope)[0] is not Match.NONE for route in request.app.routes)
    if own or path in GENERATION_ROUTES or path.removeprefix("/").startswith(ROUTER_PREFIXES):
        raise BadControlRequest(
            f"/fanout does not send {path} to the nodes: the router serves it (generation, "
            "fleet state, or a control operation, which has a route of its own)")


async def run(control: ControlRequest, state: State) -> JSONResponse:
    """Run `control` through the plane: the report, 200 or 502 when a node failed."""
    try:
        report = await state.control.run(control)
    except OperationInProgress as exc:
        raise HTTPException(409, detail=str(exc)) from None
    except BadControlRequest as exc:
        raise HTTPException(400, detail=str(exc)) from None
    if report.success:
        return JSONResponse(report.body())
    return JSONResponse({"detail": report.body()}, status_code=502)


for _path, (_operation, _dialect) in ROUTES.items():
    router.add_api_route(f"/{_path}", control, methods=["POST"], name=_path,
                         response_model=ControlReport,
                         **schemas.control_route(_operation, _dialect))
router.add_api_route(FANOUT_ROUTE, fanout, methods=["POST"], name="fanout",
                     response_model=ControlReport, **schemas.fanout_route())


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
