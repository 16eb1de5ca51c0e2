"""Background status polling: every `poll_interval_s`, ask each node `/is_sleeping` and
`/get_server_info` (each bounded by `poll_timeout_s`) and record what it says.

A node that answers neither route with JSON (plain SGLang lacks `/is_sleeping`) is still
reachable; what it did not say stays `unknown` in the status view.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from router.config import RouterSettings
from router.registry import MEMORY_TAGS, FleetRegistry, Node
from router.upstream import NodeClient, NodeReply, TransportError, call_node

POLL_MAX_BYTES = 256 << 10


def _json_object(reply: NodeReply | BaseException) -> dict[str, Any] | None:
    if isinstance(reply, BaseException) or not reply.ok or reply.truncated:
        return None
    try:
        value = json.loads(reply.body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class StatusPoller:
    def __init__(
        self, registry: FleetRegistry, session: NodeClient, settings: RouterSettings
    ) -> None:
        self._registry = registry
        self._session = session
        self._settings = settings
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="status-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self._settings.poll_interval_s)

    async def poll_all(self) -> None:
        await asyncio.gather(*(self.poll(node) for node in self._registry.all()))

    async def poll(self, node: Node) -> None:
        version = node.version
        deadline = asyncio.get_running_loop().time() + self._settings.poll_timeout_s
        started = time.perf_counter()
        sleeping_reply, info_reply = await asyncio.gather(
            # No retry of a refused poll: the next poll is the retry.
            call_node(self._session, "GET", f"{node.url}/is_sleeping",
                      deadline=deadline, max_body=POLL_MAX_BYTES, retry_refused=False),
            call_node(self._session, "GET", f"{node.url}/get_server_info",
                      deadline=deadline, max_body=POLL_MAX_BYTES, retry_refused=False),
            return_exceptions=True,
        )
        latency_ms = (time.perf_counter() - started) * 1000
        replies = (sleeping_reply, info_reply)
        errors = [r for r in replies if isinstance(r, BaseException)]
        for err in errors:
            if not isinstance(err, TransportError):
                raise err
        if len(errors) == len(replies):
            self._registry.record_poll(
                node, version, reachable=False, latency_ms=latency_ms, released_tags=None,
                memory=None, inflight=None, error=str(errors[0]),
            )
            return
        sleeping = _json_object(sleeping_reply) or {}
        info = _json_object(info_reply) or {}
        tags = sleeping.get("released_tags", info.get("released_tags"))
        if tags is None and isinstance(sleeping.get("is_sleeping"), bool):
            tags = list(MEMORY_TAGS) if sleeping["is_sleeping"] else []
        memory = info.get("memory")
        inflight = info.get("inflight")
        self._registry.record_poll(
            node,
            version,
            reachable=True,
            latency_ms=latency_ms,
            released_tags=tags if isinstance(tags, list) else None,
            memory=memory if isinstance(memory, dict) else None,
            inflight=inflight if isinstance(inflight, int) else None,
            error=None,
        )
