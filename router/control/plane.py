"""The control plane: the one path every control operation takes.

Take the control lock (one operation at a time), pick the target nodes (by role and engine;
a weights-update group's ranks are assigned here, or the request refused), fan the operation
out to them, roll a failed release back where asked, build the report, and tell the
observers (the peers, the operations log, the metrics, the status refresh) before the caller
gets the report. The
lock is held until every observer is done, so the next operation starts from a fleet every
worker has recorded.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

from pdfleet.printable import printable
from pdfleet.vocabulary import Operation
from router.config import RouterSettings
from router.control.fanout import Fanout
from router.control.lock import ControlLock, RunningOperation
from router.control.ranks import rank_offsets
from router.control.report import ControlReport, NodeResult
from router.control.request import ControlRequest
from router.engines import ENGINES
from router.http.pool import NodeClient
from router.registry import FleetRegistry, Node

ROLLBACK_OPERATION = Operation.RESUME

log = logging.getLogger("router.control")


class ControlObserver(Protocol):
    async def control_done(self, report: ControlReport) -> None:
        """Called with each finished operation's report, the control lock still held."""


class ControlPlane:
    def __init__(
        self,
        registry: FleetRegistry,
        session: NodeClient,
        settings: RouterSettings,
        lock: ControlLock,
        observers: Sequence[ControlObserver] = (),
    ) -> None:
        self._registry = registry
        self._lock = lock
        self._observers = list(observers)
        self._fanout = Fanout(registry, {
            name: engine(session, settings.error_detail_bytes)
            for name, engine in ENGINES.items()
        })

    def running(self) -> RunningOperation | None:
        return self._lock.running()

    def targets(self, request: ControlRequest) -> list[Node]:
        """The nodes `request` goes to, in the registry's order."""
        return [node for node in self._registry.with_role(request.role)
                if request.engine is None or node.engine is request.engine]

    async def run(self, request: ControlRequest, nodes: list[Node] | None = None) -> ControlReport:
        """Run `request` on `nodes` (None: its targets); OperationInProgress if another
        operation holds the lock, BadControlRequest (before any node is called) if its
        weights-update group does not fit the target nodes."""
        request_id = uuid.uuid4().hex
        with self._lock.hold(request.operation, request_id) as sequence:
            started_at = time.time()
            started = time.perf_counter()
            if nodes is None:
                nodes = self.targets(request)
            offsets = None
            if request.rank_offset is not None and request.world_size is not None:
                offsets = rank_offsets(request.rank_offset, request.world_size, nodes)
            results = await self._fanout.send(
                nodes, request.operation, request.body, request.content_type, request,
                request_id, started=started, rank_offsets=offsets)
            elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
            rollback: list[NodeResult] | None = None
            if request.rollback and not all(r.ok for r in results):
                released = [n for n, r in zip(nodes, results, strict=True) if r.ok]
                rollback = await self._fanout.send(
                    released, ROLLBACK_OPERATION, json.dumps({"tags": request.tags}).encode(),
                    "application/json", request, request_id, started=started)
            report = ControlReport.of(
                operation=request.operation, request_id=request_id, results=results,
                elapsed_ms=elapsed_ms, rollback=rollback, tags=request.tags,
                started_at=started_at, sequence=sequence, path=request.path,
                weight_version=request.weight_version, cause=request.cause)
            if report.failures:
                log.warning("%s %s failed on %d of %d nodes: %s", request.operation, request_id,
                            len(report.failures), report.total,
                            "; ".join(_why(failure) for failure in report.failures))
            for observer in self._observers:
                await observer.control_done(report)
            return report


def _why(failure: NodeResult) -> str:
    return f"{failure.server}: " + printable(
        failure.error or f"HTTP {failure.status}: {failure.detail or ''}")
