"""What a node call gives back: a `NodeReply` read whole (capped), or for a streamed 2xx
reply a `NodeStream` whose body is handed over as it arrives."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

STREAM_BUFFERED_CHUNKS = 64  # stop reading a stream the client does not keep up with


@dataclass(frozen=True, slots=True)
class NodeReply:
    status: int
    body: bytes
    truncated: bool
    content_type: str
    elapsed_ms: float
    node_sleeping: bool = False  # the node said it sleeps (SLEEPING_HEADER)
    weight_version: bytes | None = None  # the weights that served it (WEIGHT_VERSION_HEADER)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class StreamSource(Protocol):
    """The connection a stream's body arrives on."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def finish_stream(self, *, keep: bool) -> None: ...


class NodeStream:
    """A 2xx reply whose body is read as it arrives. The owner must `close()` it however it
    ends; a stream read to its end leaves its connection to the next call."""

    def __init__(self, source: StreamSource, status: int, content_type: str,
                 weight_version: bytes | None = None) -> None:
        self.status = status
        self.content_type = content_type
        self.weight_version = weight_version  # as the node's WEIGHT_VERSION_HEADER said
        self._source = source
        self._chunks: deque[bytes] = deque()
        self._arrived = False  # the node sent the whole body
        self._error: BaseException | None = None  # what ended it early
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._sink: Callable[[bytes], bool] | None = None
        self._sink_full = False

    @property
    def complete(self) -> bool:
        """Read to its end: the node sent the whole body and none of it is left unread."""
        return self._arrived and not self._chunks

    async def pipe(self, write: Callable[[bytes], bool],
                   drained: Callable[[], Awaitable[None]]) -> None:
        """Hand the body to `write` as it arrives: straight from the connection's callback,
        with no task step per piece; what arrived while this task was away goes in one piece
        (under load, one write to the client carries several events). `write` returns False
        once the client's buffer is full: the node is then not read until `drained()`
        returns. Raises the `TransportError` (or what `fail` was given) that ended the body
        early, once what arrived before it is written."""
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
            self._source.resume()
            self._sink = write
            try:
                await self._arrival()
            finally:
                self._sink = None
            if self._sink_full:
                self._sink_full = ready = False

    def fail(self, exc: BaseException) -> None:
        """End the stream early with `exc` (raised by `pipe()` once buffered data is written);
        a stream that already ended keeps its end."""
        if self._error is None and not self._arrived:
            self._error = exc
            self._wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._source.finish_stream(keep=self.complete)

    # Called by the connection.

    def feed(self, chunk: bytes) -> None:
        """A piece of the body arrived."""
        sink = self._sink
        if sink is not None:
            if not sink(chunk):  # the client is full: buffer from here on, stop reading
                self._sink = None
                self._sink_full = True
                self._source.pause()
                self._wake()
            return
        self._chunks.append(chunk)
        if len(self._chunks) > STREAM_BUFFERED_CHUNKS:
            self._source.pause()
        self._wake()

    def end(self) -> None:
        """The whole body arrived."""
        if self._error is None:
            self._arrived = True
            self._wake()

    def _take(self) -> bytes:
        buffered = self._chunks
        chunk = buffered.popleft() if len(buffered) == 1 else b"".join(buffered)
        buffered.clear()
        return chunk

    def _finished(self) -> bool:
        """True once read to its end; raises what ended it early."""
        if self._error is not None:
            raise self._error
        return self._arrived

    async def _arrival(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
