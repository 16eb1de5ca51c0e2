"""router/http: a streamed reply and the connection it arrives on, against an in-process
socket that answers like a node."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from router.http.client import start_call
from router.http.pool import NodeClient
from router.http.reply import NodeReply, NodeStream

pytestmark = pytest.mark.timeout(30)

# More than a stream buffers before it stops reading the node (STREAM_BUFFERED_CHUNKS).
EVENTS = [b"data: %d\n\n" % i for i in range(100)]
STREAM = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in EVENTS) + b"0\r\n\r\n"
STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n" \
              b"Transfer-Encoding: chunked\r\n\r\n"
PLAIN = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The first request gets a whole event stream in one write, every later one `{}`."""
    first = True
    while await reader.readuntil(b"\r\n\r\n"):
        writer.write(STREAM_HEAD + STREAM if first else PLAIN)
        first = False
        await writer.drain()


@asynccontextmanager
async def _node() -> AsyncIterator[str]:
    server = await asyncio.start_server(_answer, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_stream_read_to_its_end_after_a_pause_leaves_a_reading_connection() -> None:
    client = NodeClient()
    loop = asyncio.get_running_loop()
    try:
        async with _node() as url:
            stream = await start_call(client, "POST", f"{url}/generate", deadline=loop.time() + 5,
                                      body=b"{}", streaming=True)
            assert isinstance(stream, NodeStream)
            written: list[bytes] = []

            def write(chunk: bytes) -> bool:
                written.append(chunk)
                return False  # the client is always full: the node connection is paused

            async def drained() -> None:
                return None

            await stream.pipe(write, drained)
            stream.close()
            assert b"".join(written) == b"".join(EVENTS) and stream.complete
            # The same connection carries the next call, and reads its reply.
            reply = await start_call(client, "GET", f"{url}/v1/models",
                                     deadline=loop.time() + 2)
            assert isinstance(reply, NodeReply) and reply.body == b"{}"
    finally:
        await client.close()
