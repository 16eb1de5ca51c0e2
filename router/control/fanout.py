"""One operation sent to a set of nodes at once, each in its engine's API (router/engines:
SGLang bodies verbatim, vLLM's own routes), all under one deadline. Each node's outcome is
recorded in the registry as it arrives, so routing sees a node's new state at once.

A weight update naming a version a node is known to serve already is no call for that node
(`NoOp`), so retrying an update that failed on some nodes touches only those, unless the
request forces it.
"""

from __future__ import annotations

import asyncio
import time

from pdfleet.vocabulary import REQUEST_ID_HEADER, WEIGHT_UPDATES, EngineName, Operation
from router.control.outcome import NodeOutcome, NoOp
from router.control.ranks import with_rank_offset
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
        rank_offsets: dict[str, int] | None = None,
    ) -> list[NodeResult]:
        """`operation` on every node in `nodes`; `started` (perf_counter) is the operation's
        start, from which each node's call is timed. `rank_offsets` (by URL) is each node's
        first rank in a weights-update group, put in its body."""
        headers = {REQUEST_ID_HEADER: request_id}
        if content_type:
            headers["Content-Type"] = content_type
        if request.authorization:
            headers["Authorization"] = request.authorization
        deadline = asyncio.get_running_loop().time() + request.timeout_s
        offsets = rank_offsets or {}
        calls = [
            self._call(node, ControlCall(
                operation=operation,
                body=body if node.url not in offsets else with_rank_offset(
                    body, offsets[node.url]),
                headers=headers, tags=request.tags, level=request.level, mode=request.mode,
                deadline=deadline, released_tags=node.released_tags,
                pause_mode=request.pause_mode, query=request.query, path=request.path,
                model_path=request.model_path, weight_version=request.weight_version,
            ), started, request.force, offsets.get(node.url))
            for node in nodes
        ]
        return list(await asyncio.gather(*calls))

    async def _call(self, node: Node, call: ControlCall, started: float, force: bool,
                    rank_offset: int | None) -> NodeResult:
        started_ms = _offset_ms(started)
        outcome: NodeOutcome | None = None if force else already_updated(node, call)
        if outcome is None:
            outcome = await self._engines[node.engine].control(node.url, call)
        self._registry.record_control(node, call.operation, call.tags, outcome)
        return NodeResult.of(node.url, node.role, outcome, started_ms=started_ms,
                             ended_ms=_offset_ms(started), rank_offset=rank_offset)


def already_updated(node: Node, call: ControlCall) -> NoOp | None:
    """A NoOp when `call` is a weight update to the version `node` is known to serve."""
    if (call.operation in WEIGHT_UPDATES and call.weight_version is not None
            and node.weight_version_known and node.weight_version == call.weight_version):
        return NoOp({"noop": f"already at {call.weight_version}"})
    return None


def _offset_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)
