"""How the router's node client names a transport failure in reports and metrics: `refused`,
`reset`, `timeout` or `other` (`http` is a node's non-2xx answer, not a transport failure).
Each case is a real socket on 127.0.0.1 behaving that way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from router.http.client import call_node
from router.http.errors import ConnectionRefused, ConnectionReset, NodeTimeout, TransportError
from router.http.pool import new_session
from tests.procs import closed_port

pytestmark = pytest.mark.timeout(30)

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


async def _reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.abort()  # RST, before any reply


async def _silent(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    await reader.read()  # reads the request, never answers


async def _garbage(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    await writer.drain()


@asynccontextmanager
async def _node(behaviour: Behaviour) -> AsyncIterator[str]:
    """The URL of a one-socket server that treats every connection with `behaviour`."""
    server = await asyncio.start_server(behaviour, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _fails_with(url: str, deadline_s: float = 5.0) -> TransportError:
    client = new_session()
    try:
        deadline = asyncio.get_running_loop().time() + deadline_s
        with pytest.raises(TransportError) as failure:
            await call_node(client, "POST", f"{url}/release_memory_occupation",
                            deadline=deadline, body=b"{}", retry_refused=False)
        return failure.value
    finally:
        await client.close()


async def test_a_refused_connection_is_named_refused() -> None:
    failure = await _fails_with(f"http://127.0.0.1:{closed_port()}")
    assert isinstance(failure, ConnectionRefused) and failure.kind == "refused"


async def test_a_connection_reset_before_the_reply_is_named_reset() -> None:
    async with _node(_reset) as url:
        failure = await _fails_with(url)
        assert isinstance(failure, ConnectionReset) and failure.kind == "reset"


async def test_no_reply_by_the_deadline_is_named_timeout() -> None:
    async with _node(_silent) as url:
        failure = await _fails_with(url, deadline_s=0.3)
        assert isinstance(failure, NodeTimeout) and failure.kind == "timeout"


async def test_a_reply_that_is_not_http_is_named_other() -> None:
    async with _node(_garbage) as url:
        failure = await _fails_with(url)
        assert type(failure) is TransportError and failure.kind == "other"
        assert "ProtocolError" in str(failure)
