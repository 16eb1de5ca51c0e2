"""Applying fault rules to requests: an ASGI middleware in front of the real app.

`reset` must drop the connection itself (before the status line, or mid-body), which ASGI
cannot express: `FaultProtocol` is uvicorn's HTTP protocol with the connection's transport
added to each request's scope, and servers with fault injection on run with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from node.faults.rules import (
    REQUEST_KINDS,
    CrashFault,
    DelayFault,
    FaultSet,
    HangFault,
    ResetAt,
    ResetFault,
    SlowBodyFault,
    StatusBody,
    StatusFault,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_PATH = "/_admin/faults"
TRANSPORT_KEY = "pdfleet.transport"
HUGE_CHUNK = b"injected fault: huge body. " * 2427  # ~64 KiB
THROTTLE_TICKS_PER_S = 20

log = logging.getLogger("faults")


class FaultProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, exposing each connection's transport to the app."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[TRANSPORT_KEY] = self.transport  # type: ignore[literal-required]


def _reset(scope: Scope) -> None:
    """Drop the connection with a TCP RST, so the client sees a reset, not a clean close."""
    transport = scope.get(TRANSPORT_KEY)
    if transport is None:
        raise RuntimeError("reset faults need the server to run with FaultProtocol")
    if transport.is_closing():
        return  # the client already left (a hang outlived its caller): nothing to reset
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _hang(scope: Scope, receive: Receive, cleared: asyncio.Event) -> None:
    """Never answer: end (dropping the connection) when the rules are cleared or the client
    goes away. The request never reaches the app, so nothing it asked for happens later."""
    waiters = [asyncio.ensure_future(cleared.wait()),
               asyncio.ensure_future(_until_disconnect(receive))]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    _reset(scope)


async def _read_ahead(receive: Receive) -> Receive:
    """Read the whole request body now and replay it to the app later: a delayed node had
    the request in hand, so what it was asked to do happens even if the client gave up."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


def status_reply(rule: StatusFault) -> tuple[str, int, Callable[[], Any]]:
    """Content type, length and a chunk generator for a `status` fault's body."""
    message = f"injected fault: status {rule.code}"
    if rule.body is StatusBody.JSON:
        data = json.dumps({"success": False, "message": message}).encode()
        return "application/json", len(data), lambda: iter([data])
    if rule.body is StatusBody.TEXT:
        data = message.encode()
        return "text/plain; charset=utf-8", len(data), lambda: iter([data])
    size = rule.bytes or 0  # set for the binary and huge bodies below
    if rule.body is StatusBody.BINARY:
        data = random.Random(rule.code).randbytes(size)
        return "application/octet-stream", len(data), lambda: iter([data])

    def huge() -> Any:
        left = size
        while left > 0:
            yield HUGE_CHUNK[:left]
            left -= len(HUGE_CHUNK)

    return "text/plain; charset=utf-8", size, huge


async def _send_status(rule: StatusFault, send: Send) -> None:
    content_type, length, chunks = status_reply(rule)
    await send({"type": "http.response.start", "status": rule.code, "headers": [
        (b"content-type", content_type.encode()), (b"content-length", str(length).encode()),
        (b"x-pdfleet-fault", b"status")]})
    for chunk in chunks():
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _cut_mid_body(scope: Scope, send: Send) -> Send:
    """Pass the status line and headers, then part of the body, then reset: half of a
    one-message reply, or the first chunk of a stream."""
    state = {"body_messages": 0, "reset": False}

    async def cutting(message: Message) -> None:
        if state["reset"]:
            return  # the connection is gone; the app may still be finishing
        if message["type"] != "http.response.body":
            await send(message)
            return
        state["body_messages"] += 1
        body = message.get("body", b"")
        if message.get("more_body", False) and state["body_messages"] == 1:
            await send(message)
            return
        if state["body_messages"] == 1:
            await send({"type": "http.response.body", "body": body[: len(body) // 2],
                        "more_body": True})
        state["reset"] = True
        _reset(scope)

    return cutting


def _throttle(send: Send, rate: float) -> Send:
    """Send the real reply's body at `rate` bytes/s."""
    piece = max(1, int(rate / THROTTLE_TICKS_PER_S))

    async def throttled(message: Message) -> None:
        body = message.get("body", b"")
        if message["type"] != "http.response.body" or not body:
            await send(message)
            return
        more = message.get("more_body", False)
        for start in range(0, len(body), piece):
            chunk = body[start:start + piece]
            last = start + piece >= len(body)
            await asyncio.sleep(len(chunk) / rate)
            await send({"type": "http.response.body", "body": chunk,
                        "more_body": more or not last})

    return throttled


def _exit_at_reply(send: Send, code: int) -> Send:
    """Exit the process when the app starts its reply: the operation ran, no answer leaves."""

    async def exiting(message: Message) -> None:
        if message["type"] == "http.response.start":
            log.warning("fault injection: crashing with exit code %d", code)
            os._exit(code)
        await send(message)

    return exiting


class FaultMiddleware:
    def __init__(self, app: ASGIApp, faults: FaultSet) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == ADMIN_PATH:
            await self.app(scope, receive, send)
            return
        rule = self.faults.take(scope["path"], REQUEST_KINDS)
        if rule is None:
            await self.app(scope, receive, send)
            return
        match rule:
            case DelayFault(seconds=seconds):
                replay = await _read_ahead(receive)
                await asyncio.sleep(seconds)
                await self.app(scope, replay, send)
            case HangFault():
                await _hang(scope, receive, self.faults.cleared)
            case StatusFault():
                await _send_status(rule, send)
            case ResetFault(at=ResetAt.HEADERS):
                _reset(scope)
                await _until_disconnect(receive)
            case ResetFault():
                await self.app(scope, receive, _cut_mid_body(scope, send))
            case SlowBodyFault(rate=rate):
                await self.app(scope, receive, _throttle(send, rate))
            case CrashFault(code=code):
                await self.app(scope, receive, _exit_at_reply(send, code))
