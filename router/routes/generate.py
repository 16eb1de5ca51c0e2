"""Generation: SGLang's `/generate` and the OpenAI routes, proxied to the fleet (SPEC 3.2).

The three POST routes are the router's hot path, so they are served by an ASGI middleware
(`GenerationRoutes`) straight from the ASGI messages: the body is relayed, not modelled, and
skipping FastAPI's routing and request machinery cuts the HTTP layer's CPU per request from
about 150 µs to about 55 µs (measured without the node calls). The middleware sits inside the
body-size limit and Starlette's error handling, and passes every other request on.
`GET /v1/models` is an ordinary FastAPI route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.pd.errors import GenerationError
from router.pd.stream import DecodeStream
from router.routes.generation_docs import MODELS_REPLIES
from router.state import RouterState, router_state
from router.upstream import NodeReply

router = APIRouter()

GENERATION_PATHS = frozenset(("/generate", "/v1/completions", "/v1/chat/completions"))
JSON = b"application/json"
CLIENT_GONE = 499  # nginx's name for a request whose client left before the answer
T = TypeVar("T")


class GenerationRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what Starlette answers when serving raises
        try:
            status = await self._serve(scope, path, receive, send)
        finally:
            scope["app"].state.router.metrics.request_done(
                path, status, time.perf_counter() - started)

    async def _serve(self, scope: Scope, path: str, receive: Receive, send: Send) -> int:
        """Serve one generation request; the HTTP status it was answered with."""
        if scope["method"] != "POST":
            await send_error(send, GenerationError(405, f"{path} takes POST"), {b"allow": b"POST"})
            return 405
        state: RouterState = scope["app"].state.router
        body = await read_body(receive)
        if body is None:
            return CLIENT_GONE  # the client left before sending its request
        try:
            payload, stream = parse_request(body)
        except GenerationError as exc:
            await send_error(send, exc)
            return exc.status
        # A client that leaves cancels the node calls, streaming or not.
        gone = asyncio.ensure_future(_client_gone(receive))
        try:
            result = await _unless_gone(state.proxy.generate(path, payload, body, stream), gone)
            if result is None:
                return CLIENT_GONE
            if isinstance(result, DecodeStream):
                await relay(result, gone, send)
            else:
                await send_reply(send, result)
            return result.status
        except GenerationError as exc:
            await send_error(send, exc)
            return exc.status
        finally:
            gone.cancel()


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


async def read_body(receive: Receive) -> bytes | None:
    message = await receive()
    if message["type"] == "http.disconnect":
        return None
    if not message.get("more_body"):
        return message.get("body", b"")
    chunks = [message.get("body", b"")]
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


async def send_body(send: Send, status: int, body: bytes, content_type: bytes | None,
                    extra: dict[bytes, bytes] | None = None) -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type:
        headers.append((b"content-type", content_type))
    if extra:
        headers.extend(extra.items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_reply(send: Send, reply: NodeReply) -> None:
    await send_body(send, reply.status, reply.body, reply.content_type.encode() or None)


async def send_error(send: Send, exc: GenerationError,
                     extra: dict[bytes, bytes] | None = None) -> None:
    headers = {k.lower().encode(): v.encode() for k, v in (exc.headers or {}).items()}
    await send_body(send, exc.status, orjson.dumps(exc.body()), JSON, {**headers, **(extra or {})})


async def _unless_gone(work: Awaitable[T], gone: asyncio.Future[None]) -> T | None:
    """`work`'s result, or None once the client has gone (then `work` is cancelled, and with
    it every node call it made)."""
    task = asyncio.ensure_future(work)
    await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def relay(stream: DecodeStream, gone: asyncio.Future[None], send: Send) -> None:
    """Send the decode stream to the client chunk by chunk until it ends or the client
    leaves; either way the stream is closed, which ends both node calls."""
    pump = asyncio.ensure_future(_pump(stream, send))
    try:
        await asyncio.wait((pump, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        pump.cancel()
        stream.close()
    if pump.done() and not pump.cancelled():
        pump.result()  # a failure of our own, for Starlette's error handling


async def _pump(stream: DecodeStream, send: Send) -> None:
    await send({"type": "http.response.start", "status": stream.status,
                "headers": [(b"content-type", stream.content_type.encode())]})
    async for chunk in stream.chunks():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/models", responses=MODELS_REPLIES)
async def models(request: Request) -> Response:
    try:
        reply = await router_state(request).proxy.models()
    except GenerationError as exc:
        return Response(orjson.dumps(exc.body()), exc.status, headers=exc.headers,
                        media_type="application/json")
    return Response(reply.body, reply.status, media_type=reply.content_type or None)
