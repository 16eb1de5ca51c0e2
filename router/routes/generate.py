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
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from router.pd.errors import GenerationError
from router.pd.stream import DecodeStream
from router.state import RouterState, router_state
from router.upstream import NodeReply

router = APIRouter()

GENERATION_PATHS = frozenset(("/generate", "/v1/completions", "/v1/chat/completions"))
JSON = b"application/json"


class GenerationRoutes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or path not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        if scope["method"] != "POST":
            await send_error(send, GenerationError(405, f"{path} takes POST"), {b"allow": b"POST"})
            return
        state: RouterState = scope["app"].state.router
        body = await read_body(receive)
        if body is None:
            return  # the client left before sending its request
        try:
            payload, stream = parse_request(body)
        except GenerationError as exc:
            await send_error(send, exc)
            return
        # A client that leaves cancels this request, and with it every node call it made,
        # streaming or not.
        watch = ClientWatch(receive)
        try:
            await serve(state, path, payload, body, stream, send)
        except asyncio.CancelledError:
            if not watch.client_left:
                raise
            watch.forgive()
        finally:
            watch.stop()


async def serve(state: RouterState, path: str, payload: dict[str, Any], body: bytes,
                stream: bool, send: Send) -> None:
    result: NodeReply | DecodeStream | None = None
    try:
        result = await state.proxy.generate(path, payload, body, stream)
        if isinstance(result, DecodeStream):
            await relay(result, send)
        else:
            await send_reply(send, result)
    except GenerationError as exc:
        await send_error(send, exc)
    finally:
        if isinstance(result, DecodeStream):
            result.close()  # ends both node calls, however the relay ended


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


class ClientWatch:
    """Cancels the task serving a request once its client disconnects (the only way to
    learn that is to keep receiving)."""

    def __init__(self, receive: Receive) -> None:
        served = asyncio.current_task()
        assert served is not None
        self._served = served
        self.client_left = False
        self._watching = True
        self._watcher = asyncio.ensure_future(_client_gone(receive))
        self._watcher.add_done_callback(self._gone)

    def _gone(self, watcher: asyncio.Future[None]) -> None:
        if self._watching and not watcher.cancelled():
            self.client_left = True
            self._served.cancel()

    def forgive(self) -> None:
        """The cancellation was ours: the serving task carries on as if uncancelled."""
        self._served.uncancel()

    def stop(self) -> None:
        self._watching = False
        self._watcher.cancel()


async def relay(stream: DecodeStream, send: Send) -> None:
    """Send the decode stream to the client chunk by chunk until it ends."""
    await send({"type": "http.response.start", "status": stream.status,
                "headers": [(b"content-type", stream.content_type.encode())]})
    async for chunk in stream.chunks():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/models")
async def models(request: Request) -> Response:
    try:
        reply = await router_state(request).proxy.models()
    except GenerationError as exc:
        return Response(orjson.dumps(exc.body()), exc.status, headers=exc.headers,
                        media_type="application/json")
    return Response(reply.body, reply.status, media_type=reply.content_type or None)
