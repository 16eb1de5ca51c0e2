"""One operation sent to a set of nodes at once, each in its engine's API (router/engines:
SGLang bodies verbatim, vLLM's sleep mode), all under one deadline. Each node's outcome is
recorded in the registry as it arrives, so routing sees a node's new state at once.
"""

from __future__ import annotations

import asyncio
import time

from pdfleet.vocabulary import REQUEST_ID_HEADER, EngineName, Operation
from router.control.report import NodeResult
from router.control.request import ControlRequest
from router.engines.base import ControlCall, Engine
from router.registry import FleetRegistry, Node


class Fanout:
    def __init__(self, registry: FleetRegistry, engines: dict[EngineName, Engine]) -> None:
        self._registry = registry
        self._engines = engines

    async def send(
        self,
        nodes: list[Node],
        operation: Operation,
        body: bytes,
        content_type: str | None,
        request: ControlRequest,
        request_id: str,
        *,
        started: float,
    ) -> list[NodeResult]:
        """`operation` on every node in `nodes`; `started` (perf_counter) is the operation's
        start, from which each node's call is timed."""
        headers = {REQUEST_ID_HEADER: request_id}
        if content_type:
            headers["Content-Type"] = content_type
        if request.authorization:
            headers["Authorization"] = request.authorization
        deadline = asyncio.get_running_loop().time() + request.timeout_s
        calls = [
            self._call(node, ControlCall(
                operation=operation, body=body, headers=headers, tags=request.tags,
                level=request.level, mode=request.mode, deadline=deadline,
                released_tags=node.released_tags), started)
            for node in nodes
        ]
        return list(await asyncio.gather(*calls))

    async def _call(self, node: Node, call: ControlCall, started: float) -> NodeResult:
        started_ms = _offset_ms(started)
        outcome = await self._engines[node.engine].control(node.url, call)
        self._registry.record_control(node, call.operation, call.tags, outcome)
        return NodeResult.of(node.url, node.role, outcome,
                             started_ms=started_ms, ended_ms=_offset_ms(started))


def _offset_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
