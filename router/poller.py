"""Background status polling: every `poll_interval_s`, probe each node in its engine's API
(router/engines: `/is_sleeping`, `/get_server_info` and `/get_weight_version` for SGLang and
pdfleet nodes, vLLM's `/is_sleeping`; `/health` where those are missing), each probe bounded
by `poll_timeout_s`, and record what it says. vLLM reports no weight version: a vLLM node
keeps the one the router's last update through it set.

A node that answers without saying whether it sleeps (plain SGLang lacks `/is_sleeping`) is
still reachable; what it did not say stays `unknown` in the status view.

The nodes polled together are recorded together, once the slowest answered: the fleet's
weight version is the one most nodes report, and a view in which only the first nodes to
answer had said theirs would make the others stale (unserved) until they answered.
"""

from __future__ import annotations

import asyncio
import time

from router.config import RouterSettings
from router.control.report import ControlReport
from router.engines import ENGINES
from router.engines.base import Probe
from router.http.pool import NodeClient
from router.registry import FleetRegistry, Node


class StatusPoller:
    def __init__(
        self, registry: FleetRegistry, session: NodeClient, settings: RouterSettings
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._engines = {
            name: engine(session, settings.error_detail_bytes)
            for name, engine in ENGINES.items()
        }
        self._task: asyncio.Task[None] | None = None
        self._refreshes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="status-poller")

    async def stop(self) -> None:
        tasks = [*self._refreshes, *([self._task] if self._task is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def refresh(self, nodes: list[Node]) -> None:
        """Poll `nodes` now, in the background, without waiting for the next round."""
        if not nodes:
            return
        task = asyncio.create_task(self.poll(nodes))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)

    async def control_done(self, report: ControlReport) -> None:
        # pdfleet nodes reply with their memory after the operation, recorded with their
        # released tags, so status never shows new tags beside regions and memory from
        # before. Nodes that did not say (other engines, failures) are polled again now.
        unsaid = [self._registry.get(r.server) for r in report.results if not r.reported_memory]
        self.refresh([n for n in unsaid if n is not None])

    async def _loop(self) -> None:
        while True:
            await self.poll_all()
            await asyncio.sleep(self._settings.poll_interval_s)

    async def poll_all(self) -> None:
        await self.poll(self._registry.all())

    async def poll(self, nodes: list[Node]) -> None:
        """Probe `nodes` at once and record what each said, all together."""
        polls = await asyncio.gather(*(self._probe(node) for node in nodes))
        for node, (version, probe, latency_ms) in zip(nodes, polls, strict=True):
            self._record(node, version, probe, latency_ms)

    async def _probe(self, node: Node) -> tuple[int, Probe, float]:
        """What `node` says, the version it was at when asked, and the ms it took."""
        version = node.version
        deadline = asyncio.get_running_loop().time() + self._settings.poll_timeout_s
        started = time.perf_counter()
        probe = await self._engines[node.engine].probe(node.url, deadline, node.released_tags)
        return version, probe, (time.perf_counter() - started) * 1000

    def _record(self, node: Node, version: int, probe: Probe, latency_ms: float) -> None:
        self._registry.record_poll(
            node,
            version,
            reachable=probe.reachable,
            latency_ms=latency_ms,
            released_tags=probe.released_tags,
            memory=probe.memory,
            inflight=probe.inflight,
            error=probe.error,
            weight_version=probe.weight_version,
            weight_version_known=probe.weight_version_known,
        )
