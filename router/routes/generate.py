"""Generation: SGLang's `/generate` and the OpenAI routes, proxied to the fleet (SPEC 3.2).

These are plain Starlette routes rather than FastAPI ones: the body is relayed, not
modelled, and skipping dependency resolution and validation keeps the hot path short.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from router.pd.errors import GenerationError
from router.pd.stream import DecodeStream
from router.state import router_state
from router.upstream import NodeReply

router = APIRouter()

GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")


class RelayResponse(StreamingResponse):
    """Relays a `DecodeStream` and closes it however the response ends: done, client gone
    (Starlette cancels the relay), or failed."""

    def __init__(self, stream: DecodeStream) -> None:
        super().__init__(stream.chunks(), status_code=stream.status,
                         media_type=stream.content_type)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stream.close()


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


def node_response(reply: NodeReply) -> Response:
    return Response(reply.body, reply.status, media_type=reply.content_type or None)


def error_response(exc: GenerationError) -> JSONResponse:
    return JSONResponse(exc.body(), exc.status, headers=exc.headers)


def generation_endpoint(path: str) -> Callable[[Request], Awaitable[Response]]:
    async def generation(request: Request) -> Response:
        body = await request.body()
        try:
            payload, stream = parse_request(body)
            result = await router_state(request).proxy.generate(path, payload, body, stream)
        except GenerationError as exc:
            return error_response(exc)
        if isinstance(result, DecodeStream):
            return RelayResponse(result)
        return node_response(result)

    return generation


async def models(request: Request) -> Response:
    try:
        return node_response(await router_state(request).proxy.models())
    except GenerationError as exc:
        return error_response(exc)


for _path in GENERATION_PATHS:
    router.add_route(_path, generation_endpoint(_path), methods=["POST"])
router.add_route("/v1/models", models, methods=["GET"])
