"""The one way the router calls a node and reads its reply: with a deadline, reading at most
a bounded number of bytes, so a hung, huge or binary reply can neither stall nor bloat us.

Failures come in two kinds, as in httpx: a `NodeReply` with a non-2xx status is an HTTP
failure (the node answered); a `TransportError` means no complete answer came (refused,
reset, timeout, DNS). Only `ConnectionRefused` proves the request never reached the node,
so it is the only one retried.

The client is a lean HTTP/1.1 one (asyncio protocols, httptools' response parser, a
keep-alive pool per node) because every generation request makes two node calls: a general
client costs more CPU per call than the rest of the router's work on the request. It keeps
no cookies. A reply cut at its byte cap drops its connection instead of draining the rest, so
a 1 GiB error body costs one read. `start_call(streaming=True)` hands a 2xx reply over chunk
by chunk as it arrives (SSE relay); every other reply is read whole, capped.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httptools
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_fixed,
)

from pdfleet.vocabulary import SLEEPING_HEADER

RETRY_ATTEMPTS = 3  # in all, the first included
RETRY_WAITS_S = (0.25, 0.5)  # before the 2nd and the 3rd
STREAM_BUFFERED_CHUNKS = 64  # stop reading a stream the client does not keep up with

FailureKind = Literal["refused", "reset", "timeout", "other"]


class TransportError(Exception):
    """No complete reply came from the node."""

    @property
    def kind(self) -> FailureKind:
        return "other"


class ConnectionRefused(TransportError):
    """The node refused the connection: the request cannot have reached it."""

    @property
    def kind(self) -> FailureKind:
        return "refused"


class ConnectionReset(TransportError):
    """The connection broke before the reply was complete."""

    @property
    def kind(self) -> FailureKind:
        return "reset"


class NodeTimeout(TransportError):
    """The deadline passed before the node's reply was read."""

    @property
    def kind(self) -> FailureKind:
        return "timeout"


_SLEEPING = SLEEPING_HEADER.lower().encode()  # httptools gives header names as sent


@dataclass(frozen=True, slots=True)
class NodeReply:
    status: int
    body: bytes
    truncated: bool
    content_type: str
    elapsed_ms: float
    node_sleeping: bool = False  # the node said it sleeps (SLEEPING_HEADER)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a URL's request goes, parsed once per distinct URL."""

    origin: tuple[str, str, int]  # scheme, host, port: the pool key
    head: bytes  # b"<path> HTTP/1.1\r\nHost: <host:port>\r\n"


def _parse_target(url: str) -> _Target:
    parsed = httptools.parse_url(url.encode())
    scheme = (parsed.schema or b"").decode()
    if scheme not in ("http", "https") or not parsed.host:
        raise TransportError(f"InvalidURL: {url!r} is not an http(s) URL")
    host = parsed.host.decode().strip("[]")
    port = parsed.port or (443 if scheme == "https" else 80)
    path = parsed.path or b"/"
    if parsed.query:
        path += b"?" + parsed.query
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = path + b" HTTP/1.1\r\nHost: " + authority.encode() + b"\r\n"
    return _Target((scheme, host, port), head)


class NodeStream:
    """A 2xx reply whose body is read as it arrives. The owner must `close()` it however it
    ends; a stream read to its end leaves its connection to the next call."""

    def __init__(self, conn: _Connection, status: int, content_type: str) -> None:
        self.status = status
        self.content_type = content_type
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._end: BaseException | None = None  # an error, or _END once complete
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self._closed = False
        self._sink: Callable[[bytes], bool] | None = None
        self._sink_full = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what came since the last step, in one piece (under load,
        one write to the client carries several events). Raises the `TransportError` (or
        what `fail` was given) that ended it early."""
        while True:
            if self._chunks:
                chunk = self._take()
                self._conn.resume()
                yield chunk
            elif self._finished():
                return
            else:
                await self._arrival()

    async def pipe(self, write: Callable[[bytes], bool],
                   drained: Callable[[], Awaitable[None]]) -> None:
        """Like `chunks()`, but each piece goes to `write` straight from the connection's
        callback as it arrives, with no task step per piece. `write` returns False once the
        client's buffer is full: the node is then not read until `drained()` returns."""
        ready = True
        while True:
            if not ready:
                await drained()
                ready = True
            if self._chunks:
                ready = write(self._take())
                continue
            if self._finished():
                return
            self._conn.resume()
            self._sink = write
            try:
                await self._arrival()
            finally:
                self._sink = None
            if self._sink_full:
                self._sink_full = ready = False

    def _take(self) -> bytes:
        buffered = self._chunks
        chunk = buffered.popleft() if len(buffered) == 1 else b"".join(buffered)
        buffered.clear()
        return chunk

    def _finished(self) -> bool:
        """True once read to its end; raises what ended it early."""
        end = self._end
        if end is _END:
            self.complete = True
            return True
        if end is not None:
            raise end
        return False

    async def _arrival(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def fail(self, exc: BaseException) -> None:
        """End the stream early with `exc` (raised by `chunks()` once buffered data is read)."""
        if self._end is None:
            self._end = exc
            self._wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._conn.finish_stream(keep=self.complete)

    # Called by the connection.
    def _push(self, chunk: bytes) -> None:
        sink = self._sink
        if sink is not None:
            if not sink(chunk):  # the client is full: buffer from here on, stop reading
                self._sink = None
                self._sink_full = True
                self._conn.pause()
                self._wake()
            return
        self._chunks.append(chunk)
        if len(self._chunks) > STREAM_BUFFERED_CHUNKS:
            self._conn.pause()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


_END = StopAsyncIteration()  # what ends a stream read to its end


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to a node, carrying one exchange at a time."""

    def __init__(self, pool: NodeClient, origin: tuple[str, str, int]) -> None:
        self._pool = pool
        self._origin = origin
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reply: asyncio.Future[NodeReply | NodeStream] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._streaming = False
        self._stream: NodeStream | None = None
        self._started = 0.0
        self._max_body = 0
        self._max_error_body = 0
        self._limit = 0
        self._body: list[bytes] = []
        self._size = 0
        self._content_type = b""
        self._sleeping = False
        self._header_name = b""
        self._complete = False
        self._paused = False

    # Exchange --------------------------------------------------------------------------------

    def send(
        self, request: bytes, deadline: float, *, streaming: bool, max_body: int,
        max_error_body: int,
    ) -> asyncio.Future[NodeReply | NodeStream]:
        loop = asyncio.get_running_loop()
        self._reply = reply = loop.create_future()
        self._timer = loop.call_at(deadline, self._timed_out)
        self._streaming = streaming
        self._stream = None
        self._started = time.perf_counter()
        self._max_body = max_body
        self._max_error_body = max_error_body
        self._body = []
        self._size = 0
        self._content_type = b""
        self._sleeping = False
        self._complete = False
        reply.add_done_callback(self._left)
        assert self._transport is not None
        self._transport.write(request)
        return reply

    def _left(self, reply: asyncio.Future[NodeReply | NodeStream]) -> None:
        if reply.cancelled():
            self._close()  # the caller left: the node sees the connection close

    def abort(self) -> None:
        """Give up on the exchange: the node sees the connection close."""
        self._close()

    def finish_stream(self, *, keep: bool) -> None:
        if keep and self._complete:
            self._done(keep=True)
        else:
            self._close()

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and not self.closed:
            self._paused = False
            self._transport.resume_reading()

    def _timed_out(self) -> None:
        self._timer = None
        waited = time.perf_counter() - self._started
        self._fail(NodeTimeout(f"TimeoutError: no reply within {waited:.1f} s"))

    def _fail(self, exc: TransportError) -> None:
        reply, stream = self._reply, self._stream
        self._close()
        if reply is not None and not reply.done():
            reply.set_exception(exc)
        elif stream is not None:
            stream.fail(exc)

    def _done(self, *, keep: bool) -> None:
        """The exchange is over; the connection goes back to the pool if it can carry more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._reply = None
        self._stream = None
        if keep and not self.closed and self._parser.should_keep_alive():
            self._pool.release(self._origin, self)
        else:
            self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self._reply is None and self._stream is None:
            self._close()  # nothing was asked: a node talking out of turn is not reused
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError("ProtocolError: the node upgraded the connection"))
        except httptools.HttpParserError as exc:
            if not self.closed:  # a cap we hit closes the connection mid-parse
                self._fail(TransportError(f"ProtocolError: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: an exchange in progress fails in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pool.forget(self._origin, self)
        if self._reply is not None or self._stream is not None:
            why = describe(exc) if exc is not None else "the node closed the connection"
            self._fail(ConnectionReset(f"ServerDisconnectedError: {why}"))

    # httptools callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-type":
            self._content_type = value
        elif name == _SLEEPING:
            self._sleeping = value.strip() == b"1"

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        ok = 200 <= status < 300
        self._limit = self._max_body if ok else self._max_error_body
        if ok and self._streaming:
            reply = self._reply
            self._reply = None
            self._stream = NodeStream(self, status, self._content_type.decode("latin-1")
                                      or "text/event-stream")
            if reply is not None and not reply.done():
                reply.set_result(self._stream)

    def on_body(self, body: bytes) -> None:
        if self.closed:  # cut at its cap: the rest of this read is dropped
            return
        if self._stream is not None:
            self._stream._push(body)
            return
        self._body.append(body)
        self._size += len(body)
        if self._size > self._limit:
            self._answer(truncated=True)

    def on_message_complete(self) -> None:
        self._complete = True
        stream = self._stream
        if stream is not None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            stream.fail(_END)
            return
        if self._reply is not None:
            self._answer(truncated=False)

    def _answer(self, *, truncated: bool) -> None:
        reply = self._reply
        body = b"".join(self._body)
        if truncated:
            body = body[: self._limit]
        result = NodeReply(
            status=self._parser.get_status_code(),
            body=body,
            truncated=truncated,
            content_type=self._content_type.decode("latin-1"),
            elapsed_ms=(time.perf_counter() - self._started) * 1000,
            node_sleeping=self._sleeping,
        )
        self._body = []
        if truncated:
            self._reply = None
            self._close()  # drop the connection instead of reading the rest of the body
        else:
            self._done(keep=True)
        if reply is not None and not reply.done():
            reply.set_result(result)


class NodeClient:
    """Keep-alive connections to the fleet's nodes, one idle list per node (the router's
    "session": `new_session()` makes it, `close()` ends every connection)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None

    def target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _parse_target(url)
            if len(self._targets) < 100_000:  # URLs repeat: a node's few routes
                self._targets[url] = target
        return target

    def idle_connection(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, origin: tuple[str, str, int]) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self, origin), host, port, ssl=tls)
        except ConnectionRefusedError as exc:
            raise ConnectionRefused(describe(exc)) from exc
        except ConnectionResetError as exc:
            raise ConnectionReset(describe(exc)) from exc
        except OSError as exc:  # DNS, unreachable, TLS
            raise TransportError(describe(exc)) from exc
        return conn

    def release(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        self._idle.setdefault(origin, []).append(conn)

    def forget(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.get(origin)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.abort()


def new_session() -> NodeClient:
    return NodeClient()


def _request_bytes(
    method: str, target: _Target, body: bytes | None, headers: dict[str, str] | None
) -> bytes:
    parts = [method.encode(), b" ", target.head]
    if headers:
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise TransportError(f"InvalidHeader: {name!r} holds a line break")
            parts.append(f"{name}: {value}\r\n".encode("latin-1", errors="replace"))
    if body is not None:
        parts.append(b"Content-Length: %d\r\n\r\n" % len(body))
        parts.append(body)
    elif method in ("POST", "PUT", "PATCH"):
        parts.append(b"Content-Length: 0\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


def start_call(
    session: NodeClient,
    method: str,
    url: str,
    *,
    deadline: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    max_body: int = 64 << 10,
    max_error_body: int = 500,
    streaming: bool = False,
) -> asyncio.Future[NodeReply | NodeStream]:
    """Send one request now (no retry) and return its reply as a future: a `NodeReply`, or
    with `streaming` a `NodeStream` for a 2xx reply; a `TransportError` otherwise. On a
    pooled connection this makes no task, which is why the generation path uses it.
    Cancelling the future drops the connection, so the node sees the caller leave."""
    try:
        target = session.target(url)
        request = _request_bytes(method, target, body, headers)
    except TransportError as exc:
        failed: asyncio.Future[NodeReply | NodeStream] = \
            asyncio.get_running_loop().create_future()
        failed.set_exception(exc)
        return failed
    conn = session.idle_connection(target.origin)
    if conn is None:
        return asyncio.ensure_future(_connect_and_send(
            session, target.origin, request, deadline, streaming, max_body, max_error_body))
    return conn.send(request, deadline, streaming=streaming, max_body=max_body,
                     max_error_body=max_error_body)


async def _connect_and_send(
    session: NodeClient, origin: tuple[str, str, int], request: bytes, deadline: float,
    streaming: bool, max_body: int, max_error_body: int,
) -> NodeReply | NodeStream:
    started = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline):
            conn = await session.connect(origin)
    except TimeoutError:
        waited = time.perf_counter() - started
        raise NodeTimeout(f"TimeoutError: no connection within {waited:.1f} s") from None
    return await conn.send(request, deadline, streaming=streaming, max_body=max_body,
                           max_error_body=max_error_body)


async def call_node(
    session: NodeClient,
    method: str,
    url: str,
    *,
    deadline: float,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    max_body: int = 64 << 10,
    max_error_body: int = 500,
    retry_refused: bool = True,
) -> NodeReply:
    """Call `url` and read at most `max_body` bytes of a 2xx reply (`max_error_body` of any
    other), all before `deadline` (event-loop time). Refused connections are retried with a
    short backoff, never past the deadline, unless `retry_refused` is false: then the caller
    decides where to go next."""
    async def attempt() -> NodeReply:
        reply = await start_call(session, method, url, deadline=deadline, body=body,
                                 headers=headers, max_body=max_body,
                                 max_error_body=max_error_body)
        assert isinstance(reply, NodeReply)
        return reply

    loop = asyncio.get_running_loop()
    first_wait, later_wait = RETRY_WAITS_S
    try:
        return await attempt()  # the common case pays nothing for the retry machinery
    except ConnectionRefused:
        if not retry_refused or loop.time() + first_wait >= deadline:
            raise
    await asyncio.sleep(first_wait)

    def past_deadline(state: RetryCallState) -> bool:
        return loop.time() + (state.upcoming_sleep or 0) >= deadline

    retrying = AsyncRetrying(
        wait=wait_fixed(later_wait),
        stop=stop_after_attempt(RETRY_ATTEMPTS - 1) | past_deadline,
        retry=retry_if_exception_type(ConnectionRefused),
        reraise=True,
    )
    return await retrying(attempt)
