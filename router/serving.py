"""The router's HTTP server: uvicorn, with the three generation routes served straight from
its HTTP/1.1 protocol and every other request going to the FastAPI app.

Why: on the generation path uvicorn's ASGI cycle (message dicts, per-header checks, a head
and a body written separately) and the task that watches for a client disconnect cost more
CPU than the router's own work on the request (measured: half the router's CPU per request).
Here uvicorn still parses the request, keeps the connection alive and queues pipelined
requests; a generation request is then answered by `DirectCycle` from the parsed body, with
one write per reply, and a disconnect cancels the task serving it straight from
`connection_lost`. This is the only implementation of those routes.

The price is uvicorn's private API (`USED_UVICORN_API`): pyproject.toml pins the uvicorn
versions it is tested with, and `protocol_class` refuses to start on one that lacks it.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import logging
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from pdfleet.vocabulary import WEIGHT_VERSION_HEADER
from router.http.reply import NodeReply
from router.pd.errors import GenerationError
from router.pd.stream import DecodeStream
from router.routes.generate import (
    GENERATION_PATHS,
    answer,
    error_headers,
    request_done,
)
from router.state import RouterState

log = logging.getLogger("router")

_STATUS_LINES: dict[int, bytes] = {}
_WEIGHT_VERSION = WEIGHT_VERSION_HEADER.lower().encode()


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            phrase = http.HTTPStatus(status).phrase.encode()
        except ValueError:
            phrase = b""
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, phrase)
    return line


class _DisconnectSignal(asyncio.Event):
    """uvicorn sets the cycle's event when data arrives and when the connection is lost;
    once the body is read, a set with the cycle disconnected cancels the serving task."""

    def __init__(self, cycle: RequestResponseCycle, was_set: bool) -> None:
        super().__init__()
        self._cycle = cycle
        self.serving: asyncio.Task[None] | None = None
        self.client_left = False
        if was_set:
            super().set()

    def set(self) -> None:
        super().set()
        serving = self.serving
        if serving is not None and self._cycle.disconnected and not self.client_left:
            self.client_left = True
            serving.cancel()


class DirectCycle:
    """Serves one generation request on uvicorn's parsed `cycle`."""

    def __init__(self, cycle: RequestResponseCycle, state: RouterState) -> None:
        self._cycle = cycle
        self._state = state
        self._signal = _DisconnectSignal(cycle, cycle.message_event.is_set())
        cycle.message_event = self._signal

    async def run(self) -> None:
        cycle = self._cycle
        started = asyncio.get_running_loop().time()
        path = cycle.scope["path"]
        status = 499  # the client left before an answer
        try:
            if cycle.scope["method"] != "POST":
                status = self._send_error(
                    GenerationError(405, f"{path} takes POST"), [(b"allow", b"POST")])
                return
            body = await self._read_body()
            if body is None:
                if not cycle.disconnected:
                    status = 413
                return
            self._signal.serving = asyncio.current_task()
            if cycle.disconnected:
                return
            result = await answer(self._state, path, body)
            if isinstance(result, GenerationError):
                status = self._send_error(result)
            elif isinstance(result, DecodeStream):
                status = result.status
                try:
                    await self._relay(result)
                finally:
                    result.close()  # ends both node calls, however the relay ended
            else:
                status = self._send_reply(result)
        except asyncio.CancelledError:
            if not self._signal.client_left:
                raise
        except Exception:
            log.exception("error serving %s", path)
            status = 500
            if not cycle.response_started:
                self._write_whole(500, b"text/plain; charset=utf-8", b"Internal Server Error",
                                  [], close=True)
            else:
                cycle.transport.close()
        finally:
            self._signal.serving = None
            if status >= 500 or status == 413:  # failures only: a line per request would drown them
                log.warning("%s answered %d", path, status)
            request_done(self._state, path, status, started)

    async def _read_body(self) -> bytes | None:
        """The whole body, or None once the client left or it was refused as too large
        (then 413 is already sent)."""
        cycle = self._cycle
        limit = self._state.settings.max_body_bytes
        for name, value in cycle.scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                self._too_large(limit)
                return None
        if cycle.waiting_for_100_continue and not cycle.transport.is_closing():
            cycle.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            cycle.waiting_for_100_continue = False
        while cycle.more_body and not cycle.disconnected:
            if len(cycle.body) > limit:
                self._too_large(limit)
                return None
            cycle.flow.resume_reading()
            await self._signal.wait()
            self._signal.clear()
        if cycle.disconnected:
            return None
        if len(cycle.body) > limit:
            self._too_large(limit)
            return None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        return body

    def _too_large(self, limit: int) -> None:
        self._send_error(GenerationError(413, f"request body larger than {limit} bytes"))

    def _send_reply(self, reply: NodeReply) -> int:
        self._write_whole(reply.status, reply.content_type.encode() or None, reply.body,
                          _version_header(reply.weight_version))
        return reply.status

    def _send_error(self, exc: GenerationError,
                    extra: list[tuple[bytes, bytes]] | None = None) -> int:
        headers = error_headers(exc) + (extra or [])
        self._write_whole(exc.status, b"application/json", orjson.dumps(exc.body()), headers)
        return exc.status

    def _head(self, status: int, headers: list[tuple[bytes, bytes]], close: bool) -> list[bytes]:
        cycle = self._cycle
        cycle.response_started = True
        if close:
            cycle.keep_alive = False
        parts = [_status_line(status)]
        for name, value in cycle.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if not cycle.keep_alive:
            parts.append(b"connection: close\r\n")
        return parts

    def _write_whole(self, status: int, content_type: bytes | None, body: bytes,
                     headers: list[tuple[bytes, bytes]], close: bool = False) -> None:
        if self._cycle.disconnected:
            return
        if content_type:
            headers = [(b"content-type", content_type), *headers]
        parts = self._head(status, headers, close)
        parts += (b"content-length: %d\r\n\r\n" % len(body), body)
        self._cycle.transport.write(b"".join(parts))
        self._complete()

    async def _relay(self, stream: DecodeStream) -> None:
        cycle = self._cycle
        parts = self._head(stream.status, [(b"content-type", stream.content_type.encode()),
                                           *_version_header(stream.weight_version)],
                           close=False)
        parts.append(b"transfer-encoding: chunked\r\n\r\n")
        transport, flow = cycle.transport, cycle.flow
        transport.write(b"".join(parts))

        def write(chunk: bytes) -> bool:
            # Called from the node connection's parser: a write to a closed client transport
            # would raise there and be taken for the node's failure.
            if cycle.disconnected or transport.is_closing():
                return True
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            return not flow.write_paused

        await stream.pipe(write, flow.drain)
        if cycle.disconnected or transport.is_closing():
            return
        transport.write(b"0\r\n\r\n")
        self._complete()

    def _complete(self) -> None:
        cycle = self._cycle
        cycle.response_complete = True
        if not cycle.keep_alive:
            cycle.transport.close()
        cycle.on_response()


def _version_header(version: bytes | None) -> list[tuple[bytes, bytes]]:
    """The weight version that served a reply, as its header (none when not known)."""
    return [] if version is None else [(_WEIGHT_VERSION, version)]


# What this module uses of uvicorn beyond its public API: the hook that starts a request's
# ASGI task, and the attributes it reads and sets on the protocol, the cycle and its flow.
USED_UVICORN_API: dict[type, tuple[str, ...]] = {
    HttpToolsProtocol: ("_start_asgi_task", "loop", "tasks"),
    RequestResponseCycle: (
        "scope", "transport", "flow", "default_headers", "message_event", "on_response",
        "disconnected", "keep_alive", "waiting_for_100_continue", "body", "more_body",
        "response_started", "response_complete"),
    FlowControl: ("write_paused", "drain", "resume_reading"),
}
_HOOK_PARAMETERS = ["self", "cycle", "app"]


class UnsupportedUvicorn(RuntimeError):
    """The installed uvicorn lacks what the generation routes are served with."""


def missing_uvicorn_api() -> list[str]:
    """What `USED_UVICORN_API` names and the installed uvicorn does not have: a class
    attribute or method, or an attribute its `__init__` sets."""
    missing = [
        f"{cls.__name__}.{name}"
        for cls, names in USED_UVICORN_API.items()
        for name in names
        if not hasattr(cls, name) and name not in cls.__init__.__code__.co_names
    ]
    hook = getattr(HttpToolsProtocol, "_start_asgi_task", None)
    if hook is not None and list(inspect.signature(hook).parameters) != _HOOK_PARAMETERS:
        missing.append(f"HttpToolsProtocol._start_asgi_task({', '.join(_HOOK_PARAMETERS)})")
    return missing


def protocol_class(app: Any) -> type[HttpToolsProtocol]:
    """uvicorn's protocol, serving the generation routes of `app` (whose lifespan sets
    `app.state.router`) directly. Raises `UnsupportedUvicorn` if uvicorn changed under it."""
    missing = missing_uvicorn_api()
    if missing:
        raise UnsupportedUvicorn(
            f"uvicorn {uvicorn.__version__} lacks what router/serving.py serves the generation "
            f"routes with: {', '.join(missing)}; install the uvicorn version pyproject.toml pins")

    class RouterProtocol(HttpToolsProtocol):
        def _start_asgi_task(self, cycle: RequestResponseCycle, asgi: Any) -> None:
            if cycle.scope["path"] not in GENERATION_PATHS:
                super()._start_asgi_task(cycle, asgi)
                return
            task = self.loop.create_task(DirectCycle(cycle, app.state.router).run())
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)

    return RouterProtocol
