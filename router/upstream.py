"""The one way the router calls a node and reads its reply: with a deadline, reading at most
a bounded number of bytes, so a hung, huge or binary reply can neither stall nor bloat us.

Failures come in two kinds, as in httpx: a `NodeReply` with a non-2xx status is an HTTP
failure (the node answered); a `TransportError` means no complete answer came (refused,
reset, timeout, DNS). Only `ConnectionRefused` proves the request never reached the node,
so it is the only one retried.
"""

from __future__ import annotations

import asyncio
import errno
import time
from dataclasses import dataclass

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

RETRY_ATTEMPTS = 3


class TransportError(Exception):
    """No complete reply came from the node."""

    @property
    def kind(self) -> str:
        """`refused`, `reset`, `timeout` or `other`: how reports and metrics name it."""
        return "other"


class ConnectionRefused(TransportError):
    """The node refused the connection: the request cannot have reached it."""

    @property
    def kind(self) -> str:
        return "refused"


class ConnectionReset(TransportError):
    """The connection broke (reset, closed early, cut body) before the reply was complete."""

    @property
    def kind(self) -> str:
        return "reset"


class NodeTimeout(TransportError):
    """The deadline passed before the node's reply was read."""

    @property
    def kind(self) -> str:
        return "timeout"


@dataclass(frozen=True, slots=True)
class NodeReply:
    status: int
    body: bytes
    truncated: bool
    content_type: str
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def new_session() -> aiohttp.ClientSession:
    # limit=0: a fan-out to hundreds of nodes must not queue behind a connection cap.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    # No cookie jar: a node's cookies must not be kept and replayed on other clients' requests.
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 timeout=aiohttp.ClientTimeout(total=None))


def describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def transport_error(exc: aiohttp.ClientError | OSError) -> TransportError:
    """The `TransportError` an aiohttp or socket failure stands for."""
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
        exc.os_error, ConnectionRefusedError
    ):
        return ConnectionRefused(describe(exc.os_error))
    if _is_reset(exc):
        return ConnectionReset(describe(exc))
    return TransportError(describe(exc))


def _is_reset(exc: aiohttp.ClientError | OSError) -> bool:
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError
                  | ConnectionResetError):
        return True
    if isinstance(exc, aiohttp.ClientOSError):
        return exc.errno in (errno.ECONNRESET, errno.EPIPE) or isinstance(
            exc.__cause__, ConnectionResetError)
    return False


async def read_capped(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    remaining = limit + 1  # one byte more tells us whether the body was cut
    while remaining > 0:
        chunk = await resp.content.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    body = b"".join(chunks)
    truncated = len(body) > limit
    if truncated:
        resp.close()  # drop the connection instead of draining the rest of the body
    return body[:limit], truncated


async def _call_once(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: bytes | None,
    headers: dict[str, str] | None,
    max_body: int,
    max_error_body: int,
    started: float,
) -> NodeReply:
    try:
        async with session.request(method, url, data=body, headers=headers) as resp:
            limit = max_body if 200 <= resp.status < 300 else max_error_body
            data, truncated = await read_capped(resp, limit)
            return NodeReply(
                status=resp.status,
                body=data,
                truncated=truncated,
                content_type=resp.headers.get("Content-Type", ""),
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
    except (aiohttp.ClientError, OSError) as exc:
        raise transport_error(exc) from exc


async def call_node(
    session: aiohttp.ClientSession,
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
    started = time.perf_counter()
    args = (session, method, url, body, headers, max_body, max_error_body, started)
    try:
        async with asyncio.timeout_at(deadline):
            if not retry_refused:
                return await _call_once(*args)
            retrying = AsyncRetrying(
                stop=stop_after_attempt(RETRY_ATTEMPTS),
                wait=wait_exponential(multiplier=0.25, max=0.5),
                retry=retry_if_exception_type(ConnectionRefused),
                reraise=True,
            )
            return await retrying(_call_once, *args)
    except TimeoutError:
        waited = time.perf_counter() - started
        raise NodeTimeout(f"TimeoutError: no reply within {waited:.1f} s") from None
