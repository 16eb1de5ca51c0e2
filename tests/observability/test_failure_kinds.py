"""How aiohttp and socket failures are named in reports and metrics: `refused`, `reset`,
`timeout` or `other` (`http` is a node's non-2xx answer, not a transport failure)."""

from __future__ import annotations

import errno

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from router.upstream import NodeTimeout, transport_error

KEY = ConnectionKey("127.0.0.1", 1, False, True, None, None, None)


@pytest.mark.parametrize(("error", "kind"), [
    (aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(errno.ECONNREFUSED, "refused")),
     "refused"),
    (aiohttp.ServerDisconnectedError(), "reset"),
    (aiohttp.ClientOSError(errno.ECONNRESET, "Connection reset by peer"), "reset"),
    (aiohttp.ClientPayloadError("Response payload is not completed"), "reset"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "reset"),
    (aiohttp.ClientConnectorError(KEY, OSError(errno.EHOSTUNREACH, "no route")), "other"),
    (aiohttp.ClientOSError(errno.ENETUNREACH, "Network is unreachable"), "other"),
])
def test_transport_failures_are_named_by_kind(
    error: aiohttp.ClientError | OSError, kind: str
) -> None:
    assert transport_error(error).kind == kind


def test_a_timeout_is_named_timeout() -> None:
    assert NodeTimeout("TimeoutError: no reply within 1.0 s").kind == "timeout"
