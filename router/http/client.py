"""The one way the router calls a node: with a deadline, reading at most a bounded number of
bytes of the reply, so a hung, huge or binary reply can neither stall nor bloat us.

`start_call` sends one request now and gives its reply as a future; `call_node` awaits it,
retrying a refused connection (the only failure that proves the request never reached the
node). A reply cut at its byte cap drops its connection instead of draining the rest, so a
1 GiB error body costs one read. With `streaming=True` a 2xx reply is handed over chunk by
chunk as it arrives (SSE relay); every other reply is read whole, capped.

The client is a lean HTTP/1.1 one (asyncio protocols, httptools' response parser, a
keep-alive pool per node) because every generation request makes two node calls: a general
client costs more CPU per call than the rest of the router's work on the request.
"""

from __future__ import annotations

import asyncio
import time

from pdfleet.retry import RetryPolicy, retry
from router.http.errors import ConnectionRefused, TransportError, transport_error
from router.http.pool import NodeClient
from router.http.reply import NodeReply, NodeStream
from router.http.request import Origin, request_bytes

# 3 attempts in all, 0.25 s before the 2nd and 0.5 s before the 3rd, never past the deadline.
REFUSED_RETRY = RetryPolicy(on=(ConnectionRefused,), attempts=3, waits=(0.25, 0.5))
NO_RETRY = RetryPolicy(on=(), attempts=1)


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
        request = request_bytes(method, target, body, headers)
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
    session: NodeClient, origin: Origin, request: bytes, deadline: float,
    streaming: bool, max_body: int, max_error_body: int,
) -> NodeReply | NodeStream:
    started = time.perf_counter()
    try:
        async with asyncio.timeout_at(deadline):
            conn = await session.connect(origin)
    except TimeoutError as exc:
        waited = time.perf_counter() - started
        raise transport_error(
            exc, f"TimeoutError: no connection within {waited:.1f} s") from None
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
    other), all before `deadline` (event-loop time). Refused connections are retried
    (`REFUSED_RETRY`), never past the deadline, unless `retry_refused` is false: then the
    caller decides where to go next."""
    async def attempt() -> NodeReply:
        reply = await start_call(session, method, url, deadline=deadline, body=body,
                                 headers=headers, max_body=max_body,
                                 max_error_body=max_error_body)
        assert isinstance(reply, NodeReply)
        return reply

    return await retry(attempt, REFUSED_RETRY if retry_refused else NO_RETRY, deadline)
