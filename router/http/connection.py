"""One HTTP/1.1 connection to a node, carrying one exchange at a time.

Its life is `ConnectionState`, and `TRANSITIONS` holds every change it may make:

    NEW ──> IDLE ──send──> ACTIVE ──reply read whole──> IDLE (back to its pool)
                             │
                             └──2xx head of a stream──> STREAMING ──body ends──> DRAINED
                                                                                  │
                      IDLE <──the stream's owner closes it, read to its end───────┘

and from every state but CLOSED: ──> CLOSED (a failure, the deadline, the caller leaving, a
reply cut at its cap, the node closing, or a reply that does not allow keep-alive). A closed
connection is never used again. What one exchange needs (its reply future, deadline timer,
caps, the body read so far) lives in an `_Exchange` that ends with it.
"""

from __future__ import annotations

import asyncio
import time
from enum import Enum
from typing import Protocol

import httptools

from pdfleet.vocabulary import SLEEPING_HEADER, WEIGHT_VERSION_HEADER
from router.http.errors import ConnectionReset, NodeTimeout, TransportError, describe
from router.http.reply import NodeReply, NodeStream
from router.http.request import Origin

_SLEEPING = SLEEPING_HEADER.lower().encode()  # httptools gives header names as sent
_WEIGHT_VERSION = WEIGHT_VERSION_HEADER.lower().encode()


class ConnectionState(Enum):
    NEW = "new"  # connecting
    IDLE = "idle"  # connected, no exchange: in its pool, or about to carry its first
    ACTIVE = "active"  # a request sent; its reply (or a stream's head) being read
    STREAMING = "streaming"  # a 2xx head handed over as a NodeStream; the body arriving
    DRAINED = "drained"  # the stream's body ended; its owner has not closed the stream yet
    CLOSED = "closed"

    # Members are singletons, equal only to themselves: hash them by identity, in C (Enum's
    # own hash is Python code, and every exchange looks states up in TRANSITIONS).
    __hash__ = object.__hash__


# The members by name: a class attribute of an Enum costs a Python-level lookup per use.
NEW, IDLE, ACTIVE, STREAMING, DRAINED, CLOSED = ConnectionState

TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    NEW: frozenset({IDLE, CLOSED}),
    IDLE: frozenset({ACTIVE, CLOSED}),
    ACTIVE: frozenset({IDLE, STREAMING, CLOSED}),
    STREAMING: frozenset({DRAINED, CLOSED}),
    DRAINED: frozenset({IDLE, CLOSED}),
    CLOSED: frozenset(),
}
# Where a lost connection fails the exchange it carries.
_READING = frozenset({ACTIVE, STREAMING})


class InvalidTransition(RuntimeError):
    """A change of state `TRANSITIONS` does not allow: a bug in this module, not the node."""


def next_state(current: ConnectionState, wanted: ConnectionState) -> ConnectionState:
    """`wanted`, if `TRANSITIONS` lets `current` become it."""
    if wanted not in TRANSITIONS[current]:
        raise InvalidTransition(f"a connection cannot go from {current.name} to {wanted.name}")
    return wanted


class ConnectionPool(Protocol):
    """Where a connection goes back once it can carry another exchange (`pool.NodeClient`)."""

    def release(self, origin: Origin, conn: Connection) -> None: ...

    def forget(self, origin: Origin, conn: Connection) -> None: ...


class _Exchange:
    """One request on a connection and what has been read of its reply."""

    __slots__ = ("body", "content_type", "keep_alive", "limit", "max_body", "max_error_body",
                 "reply", "size", "sleeping", "started", "stream", "streaming", "timer",
                 "weight_version")

    def __init__(self, reply: asyncio.Future[NodeReply | NodeStream], timer: asyncio.TimerHandle,
                 streaming: bool, max_body: int, max_error_body: int) -> None:
        self.reply = reply
        self.timer: asyncio.TimerHandle | None = timer
        self.streaming = streaming
        self.max_body = max_body
        self.max_error_body = max_error_body
        self.started = time.perf_counter()
        self.stream: NodeStream | None = None
        self.limit = 0  # max_body or max_error_body, once the status is known
        # Whether the reply lets the connection carry another exchange, read with its head:
        # the parser forgets it once the message is complete, before a stream's owner is done.
        self.keep_alive = False
        self.body: list[bytes] = []
        self.size = 0
        self.content_type = b""
        self.sleeping = False
        self.weight_version: bytes | None = None

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Connection(asyncio.Protocol):
    """The protocol of one node connection: asyncio's and httptools' callbacks drive it
    through `ConnectionState`."""

    def __init__(self, pool: ConnectionPool, origin: Origin) -> None:
        self._pool = pool
        self._origin = origin
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._state = NEW
        self._exchange: _Exchange | None = None
        self._paused = False  # reading paused: a stream's client does not keep up

    @property
    def state(self) -> ConnectionState:
        return self._state

    def _become(self, state: ConnectionState) -> None:
        self._state = next_state(self._state, state)

    # Exchange --------------------------------------------------------------------------------

    def send(
        self, request: bytes, deadline: float, *, streaming: bool, max_body: int,
        max_error_body: int,
    ) -> asyncio.Future[NodeReply | NodeStream]:
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[NodeReply | NodeStream] = loop.create_future()
        if self._state is CLOSED:  # lost between connecting and sending
            reply.set_exception(ConnectionReset(
                "ServerDisconnectedError: the node closed the connection"))
            return reply
        self._become(ACTIVE)
        exchange = self._exchange = _Exchange(
            reply, loop.call_at(deadline, self._timed_out), streaming, max_body, max_error_body)
        reply.add_done_callback(lambda _: self._left(exchange))
        assert self._transport is not None
        self._transport.write(request)
        return reply

    def _left(self, exchange: _Exchange) -> None:
        if exchange.reply.cancelled() and exchange is self._exchange:
            self._close()  # the caller left: the node sees the connection close

    def abort(self) -> None:
        """Give up on the exchange: the node sees the connection close."""
        self._close()

    def finish_stream(self, *, keep: bool) -> None:
        exchange = self._exchange
        if keep and exchange is not None and self._state is DRAINED:
            self._done(exchange)
        else:
            self._close()

    def pause(self) -> None:
        if not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self._transport is not None and self._state is not CLOSED:
            self._paused = False
            self._transport.resume_reading()

    def _timed_out(self) -> None:
        exchange = self._exchange
        assert exchange is not None  # its timer is cancelled when it ends
        exchange.timer = None
        waited = time.perf_counter() - exchange.started
        self._fail(NodeTimeout(f"TimeoutError: no reply within {waited:.1f} s"))

    def _fail(self, exc: TransportError) -> None:
        exchange = self._exchange
        self._close()
        if exchange is None:
            return
        if exchange.stream is not None:
            exchange.stream.fail(exc)
        elif not exchange.reply.done():
            exchange.reply.set_exception(exc)

    def _done(self, exchange: _Exchange) -> None:
        """`exchange` is over: back to the pool if the connection can carry another."""
        exchange.stop_timer()
        self._exchange = None
        if exchange.keep_alive:
            self._become(IDLE)
            self.resume()  # a stream may have paused it before its end
            self._pool.release(self._origin, self)
        else:
            self._close()

    def _close(self) -> None:
        exchange = self._exchange
        if exchange is not None:
            exchange.stop_timer()
            self._exchange = None
        if self._state is not CLOSED:
            self._become(CLOSED)
            if self._transport is not None:
                self._transport.close()

    # asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._become(IDLE)

    def data_received(self, data: bytes) -> None:
        if self._state not in _READING:
            self._close()  # nothing was asked: a node talking out of turn is not reused
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(TransportError("ProtocolError: the node upgraded the connection"))
        except httptools.HttpParserError as exc:
            if self._state is not CLOSED:  # a cap we hit closes it mid-parse
                self._fail(TransportError(f"ProtocolError: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # close the transport: an exchange in progress fails in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state in _READING:
            # Lost mid-reply is a reset, whatever the OS said (nothing, for a plain close).
            why = describe(exc) if exc is not None else "the node closed the connection"
            self._fail(ConnectionReset(f"ServerDisconnectedError: {why}"))
        else:
            self._close()
        self._pool.forget(self._origin, self)

    # httptools callbacks ---------------------------------------------------------------------

    # Each returns at once on a connection closed mid-parse (a reply cut at its cap): the
    # rest of what was read is dropped.

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        name = name.lower()
        if name == b"content-type":
            exchange.content_type = value
        elif name == _SLEEPING:
            exchange.sleeping = value.strip() == b"1"
        elif name == _WEIGHT_VERSION:
            exchange.weight_version = value.strip()

    def on_headers_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        status = self._parser.get_status_code()
        ok = 200 <= status < 300
        exchange.keep_alive = self._parser.should_keep_alive()
        exchange.limit = exchange.max_body if ok else exchange.max_error_body
        if ok and exchange.streaming:
            self._become(STREAMING)
            stream = exchange.stream = NodeStream(
                self, status, exchange.content_type.decode("latin-1") or "text/event-stream",
                exchange.weight_version)
            if not exchange.reply.done():
                exchange.reply.set_result(stream)

    def on_body(self, body: bytes) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if exchange.stream is not None:
            exchange.stream.feed(body)
            return
        exchange.body.append(body)
        exchange.size += len(body)
        if exchange.size > exchange.limit:
            self._answer(exchange, truncated=True)

    def on_message_complete(self) -> None:
        exchange = self._exchange
        if exchange is None:
            return
        if exchange.stream is not None:
            exchange.stop_timer()
            self._become(DRAINED)
            exchange.stream.end()
        else:
            self._answer(exchange, truncated=False)

    def _answer(self, exchange: _Exchange, *, truncated: bool) -> None:
        body = b"".join(exchange.body)
        if truncated:
            body = body[: exchange.limit]
        result = NodeReply(
            status=self._parser.get_status_code(),
            body=body,
            truncated=truncated,
            content_type=exchange.content_type.decode("latin-1"),
            elapsed_ms=(time.perf_counter() - exchange.started) * 1000,
            node_sleeping=exchange.sleeping,
            weight_version=exchange.weight_version,
        )
        exchange.body = []
        if truncated:
            self._close()  # drop the connection instead of reading the rest of the body
        else:
            self._done(exchange)
        if not exchange.reply.done():
            exchange.reply.set_result(result)
