"""Cluster control fan-out: one memory operation sent to every target node at once.

Each node gets the operation in its engine's API (router/engines: SGLang bodies verbatim,
vLLM's sleep mode), all nodes are called concurrently under one deadline,
and the caller gets a `FanoutReport` that names every node that failed and why. One control
operation runs at a time per router, since interleaved sleeps and wakes leave a fleet in a
state nobody asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from pdfleet.vocabulary import Operation, Role
from router.config import RouterSettings
from router.engines import ENGINES
from router.engines.base import ControlCall
from router.http.errors import ConnectionRefused, TransportError
from router.http.pool import NodeClient
from router.registry import FleetRegistry, Node

ROLLBACK_OPERATION = Operation.RESUME


Outcome = Literal["success", "partial", "failure"]


class NodeResult(BaseModel):
    server: str
    role: str
    elapsed_ms: float
    status: int | None = None
    result: Any = None
    detail: str | None = None
    error: str | None = None
    # `http` (the node answered non-2xx) or the TransportError's kind; None on success.
    kind: str | None = None
    # When the node's call began and ended, in ms from the operation's start (a timeline).
    started_ms: float = 0.0
    ended_ms: float = 0.0

    @property
    def reported_memory(self) -> bool:
        """Whether the node's reply said its memory after the operation (pdfleet nodes do)."""
        return isinstance(self.result, dict) and isinstance(self.result.get("memory"), dict)

    @property
    def ok(self) -> bool:
        # No status and no error: the engine needed no call for this operation (a no-op).
        return self.error is None and (self.status is None or 200 <= self.status < 300)

    def success_view(self) -> dict[str, Any]:
        return self.model_dump(include={"server", "role", "status", "elapsed_ms", "result"})

    def failure_view(self) -> dict[str, Any]:
        if self.error is not None:
            return self.model_dump(include={"server", "role", "error", "kind", "elapsed_ms"})
        return self.model_dump(
            include={"server", "role", "status", "detail", "kind", "elapsed_ms"})


class FanoutReport(BaseModel):
    operation: str
    request_id: str
    elapsed_ms: float
    results: list[NodeResult]
    rollback: list[NodeResult] | None = None
    tags: list[str] | None = None
    started_at: float = 0.0  # wall-clock seconds

    @property
    def failures(self) -> list[NodeResult]:
        return [r for r in self.results if not r.ok]

    @property
    def outcome(self) -> Outcome:
        failed = len(self.failures)
        if failed == 0:
            return "success"
        return "failure" if failed == len(self.results) else "partial"

    def reply(self) -> tuple[int, dict[str, Any]]:
        """The HTTP status and JSON body the router answers with."""
        failures = self.failures
        total = len(self.results)
        if not failures:
            return 200, {
                "success": True,
                "operation": self.operation,
                "request_id": self.request_id,
                "total": total,
                "succeeded": total,
                "failed": 0,
                "elapsed_ms": self.elapsed_ms,
                "nodes": [r.success_view() for r in self.results],
            }
        detail: dict[str, Any] = {
            "message": f"{self.operation} failed on {len(failures)}/{total} nodes",
            "operation": self.operation,
            "request_id": self.request_id,
            "total": total,
            "failed": len(failures),
            "succeeded": [r.server for r in self.results if r.ok],
            "failures": [r.failure_view() for r in failures],
            "nodes": [r.success_view() for r in self.results if r.ok],
            "elapsed_ms": self.elapsed_ms,
        }
        if self.rollback is not None:
            detail["rollback"] = [
                r.success_view() if r.ok else r.failure_view() for r in self.rollback
            ]
        return 502, {"detail": detail}


@dataclass(frozen=True, slots=True)
class ControlRequest:
    operation: Operation
    body: bytes
    content_type: str | None
    tags: list[str] | None
    role: Role | None
    timeout_s: float
    rollback: bool = False
    authorization: str | None = None
    level: int = 1  # vLLM's sleep level
    mode: str | None = None  # "abort" | "wait": what a release does with in-flight requests


# Called with each finished operation's report before the caller gets it: the status refresh,
# the operations log and the metrics hang here.
ReportObserver = Callable[[FanoutReport], Awaitable[None]]


class OperationInProgress(Exception):
    def __init__(self, operation: str, request_id: str) -> None:
        super().__init__(f"another control operation is running: {operation} ({request_id})")


class ControlPlane:
    def __init__(
        self,
        registry: FleetRegistry,
        session: NodeClient,
        settings: RouterSettings,
        observer: ReportObserver | None = None,
    ) -> None:
        self._registry = registry
        self._session = session
        self._settings = settings
        self._observer = observer
        self._running: tuple[str, str] | None = None
        self._engines = {
            name: engine(session, settings.error_detail_bytes)
            for name, engine in ENGINES.items()
        }

    @property
    def running(self) -> tuple[str, str] | None:
        return self._running

    async def run(self, request: ControlRequest, request_id: str | None = None) -> FanoutReport:
        if self._running is not None:
            raise OperationInProgress(*self._running)
        request_id = request_id or uuid.uuid4().hex
        self._running = (request.operation, request_id)
        try:
            report = await self._run(request, request_id)
            if self._observer is not None:
                await self._observer(report)
            return report
        finally:
            self._running = None

    async def _run(self, request: ControlRequest, request_id: str) -> FanoutReport:
        started_at = time.time()
        started = time.perf_counter()
        nodes = self._registry.with_role(request.role)
        results = await self._fan_out(
            nodes, request.operation, request.body, request, request_id, request.tags,
            started=started,
        )
        report = FanoutReport(
            operation=request.operation,
            request_id=request_id,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
            results=results,
            tags=request.tags,
            started_at=started_at,
        )
        rollback = request.rollback and request.operation is Operation.RELEASE
        if rollback and report.failures:
            released = [n for n, r in zip(nodes, results, strict=True) if r.ok]
            body = json.dumps({"tags": request.tags}).encode()
            report.rollback = await self._fan_out(
                released, ROLLBACK_OPERATION, body, request, request_id, request.tags,
                started=started, content_type="application/json",
            )
        return report

    async def _fan_out(
        self,
        nodes: list[Node],
        operation: str,
        body: bytes,
        request: ControlRequest,
        request_id: str,
        tags: list[str] | None,
        *,
        started: float,
        content_type: str | None = None,
    ) -> list[NodeResult]:
        headers = {"X-Request-Id": request_id}
        if content_type or request.content_type:
            headers["Content-Type"] = content_type or request.content_type or ""
        if request.authorization:
            headers["Authorization"] = request.authorization
        deadline = asyncio.get_running_loop().time() + request.timeout_s
        calls = [
            _timed(self._call(n, operation, body, headers, deadline, tags, request), started)
            for n in nodes
        ]
        return list(await asyncio.gather(*calls))

    async def _call(
        self,
        node: Node,
        operation: str,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
        tags: list[str] | None,
        request: ControlRequest,
    ) -> NodeResult:
        started = time.perf_counter()
        base = {"server": node.url, "role": node.role.value}
        call = ControlCall(
            operation=operation, body=body, headers=headers, tags=tags, level=request.level,
            mode=request.mode, deadline=deadline, released_tags=node.released_tags,
        )
        try:
            outcome = await self._engines[node.engine].control(node.url, call)
        except TransportError as exc:
            result = NodeResult(
                **base, elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
                error=str(exc), kind=exc.kind,
            )
            if isinstance(exc, ConnectionRefused):
                self._registry.mark_down(node, str(exc))
            self._registry.record_control(node, operation, tags, error=str(exc))
            return result
        elapsed = outcome.elapsed_ms
        if outcome.error is not None:
            self._registry.record_control(node, operation, tags, error=outcome.error)
            return NodeResult(**base, elapsed_ms=elapsed, error=outcome.error, kind="other")
        if outcome.status is not None and not 200 <= outcome.status < 300:
            detail = outcome.detail or ""
            self._registry.record_control(
                node, operation, tags, error=f"HTTP {outcome.status}: {detail}"
            )
            return NodeResult(**base, elapsed_ms=elapsed, status=outcome.status, detail=detail,
                              kind="http")
        self._registry.record_control(
            node, operation, tags, error=None, reported_tags=outcome.released_tags,
            reported_memory=outcome.memory,
        )
        return NodeResult(**base, elapsed_ms=elapsed, status=outcome.status, result=outcome.result)


def _offset_ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 2)


async def _timed(call: Awaitable[NodeResult], since: float) -> NodeResult:
    """`call`'s result with its start and end as offsets from `since` (the operation's start)."""
    started_ms = _offset_ms(since)
    result = await call
    result.started_ms = started_ms
    result.ended_ms = _offset_ms(since)
    return result
