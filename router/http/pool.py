"""`NodeClient`: keep-alive connections to the fleet's nodes, one idle list per node."""

from __future__ import annotations

import asyncio
import ssl

from router.http.connection import IDLE, Connection
from router.http.errors import transport_error
from router.http.request import Origin, Target, parse_target

_MAX_TARGETS = 100_000  # URLs repeat (a node's few routes); a bound all the same


class NodeClient:
    """The router's "session": `new_session()` makes it, `close()` ends every idle
    connection. It keeps no cookies."""

    def __init__(self) -> None:
        self._idle: dict[Origin, list[Connection]] = {}
        self._targets: dict[str, Target] = {}
        self._tls: ssl.SSLContext | None = None

    def target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = parse_target(url)
            if len(self._targets) < _MAX_TARGETS:
                self._targets[url] = target
        return target

    def idle_connection(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.state is IDLE:
                return conn
        return None

    async def connect(self, origin: Origin) -> Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            tls = self._tls = self._tls or ssl.create_default_context()
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: Connection(self, origin), host, port, ssl=tls)
        except OSError as exc:
            raise transport_error(exc) from exc
        return conn

    def release(self, origin: Origin, conn: Connection) -> None:
        self._idle.setdefault(origin, []).append(conn)

    def forget(self, origin: Origin, conn: Connection) -> None:
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
