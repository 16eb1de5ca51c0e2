"""Generation: SGLang's `/generate` and the OpenAI routes, proxied to the fleet.

The three POST routes are the router's hot path: `answer` serves one request from its raw
body (relayed, not modelled), and `router.serving` sends what it gives straight from
uvicorn's HTTP protocol, before any ASGI middleware or FastAPI routing (their OpenAPI entries
are in `generation_docs`). Every such request ends in `request_done`. `GET /v1/models` is an
ordinary FastAPI route.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from router.http.reply import NodeReply
from router.pd.errors import GenerationError
from router.pd.stream import DecodeStream
from router.routes.generation_docs import GENERATION_ROUTES, MODELS_REPLIES
from router.state import RouterState, router_state

router = APIRouter()

GENERATION_PATHS = frozenset(GENERATION_ROUTES)


async def answer(state: RouterState, path: str, body: bytes
                 ) -> NodeReply | DecodeStream | GenerationError:
    """What one generation request gets: decode's reply, its stream (the caller relays it
    and must close it), or the error the client is told."""
    try:
        payload, stream = parse_request(body)
        return await state.proxy.generate(path, payload, body, stream)
    except GenerationError as exc:
        return exc


def request_done(state: RouterState, route: str, status: int, started: float) -> None:
    """Every generation request ends here, however it was served, with its route, status
    (499: the client left first) and start time (event-loop clock) known: the one place
    for per-request accounting."""
    state.metrics.request_done(route, status, asyncio.get_running_loop().time() - started)


def parse_request(body: bytes) -> tuple[dict[str, Any], bool]:
    """The request's JSON object and whether it asks for a stream."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise GenerationError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise GenerationError(400, "request body must be a JSON object")
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise GenerationError(422, f"stream must be true or false, got {stream!r}")
    return payload, stream is True


def error_headers(exc: GenerationError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]


@router.get("/v1/models", responses=MODELS_REPLIES)
async def models(request: Request) -> Response:
    try:
        reply = await router_state(request).proxy.models()
    except GenerationError as exc:
        return Response(orjson.dumps(exc.body()), exc.status, headers=exc.headers,
                        media_type="application/json")
    return Response(reply.body, reply.status, media_type=reply.content_type or None)
