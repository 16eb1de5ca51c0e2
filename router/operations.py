"""The log of recent control operations, newest first: what `GET /cluster/operations` serves
and the dashboard's timeline draws (one bar per node, from its start to its end offset).

Each router process keeps its own log: of the operations it ran (it is one of the control
plane's observers) and of those its peer workers ran (router/peers.py hands them over).
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from pydantic import BaseModel

from pdfleet.vocabulary import Operation, Role
from router.control.report import ControlReport, NodeFailureKind, NodeResult, OperationOutcome

OPERATIONS_KEPT = 50


class NodeEntry(BaseModel):
    server: str
    role: Role
    outcome: Literal["success", "failure"]
    started_ms: float
    ended_ms: float
    status: int | None
    error: str | None  # the transport error, the engine's refusal or the node's error body
    kind: NodeFailureKind | None

    @classmethod
    def of(cls, result: NodeResult) -> NodeEntry:
        return cls(
            server=result.server, role=result.role,
            outcome="success" if result.ok else "failure",
            started_ms=result.started_ms, ended_ms=result.ended_ms, status=result.status,
            error=result.error if result.error is not None else result.detail,
            kind=result.kind)


class OperationEntry(BaseModel):
    operation: Operation
    request_id: str
    tags: list[str] | None
    started_at: float  # wall-clock seconds
    elapsed_ms: float
    outcome: OperationOutcome
    total: int
    failed: int
    nodes: list[NodeEntry]
    rollback: list[NodeEntry] | None
    # Why the router ran it itself (a pod joining a sleeping fleet); None: a caller asked.
    cause: str | None = None

    @classmethod
    def of(cls, report: ControlReport) -> OperationEntry:
        return cls(
            operation=report.operation, request_id=report.request_id, tags=report.tags,
            started_at=report.started_at, elapsed_ms=report.elapsed_ms,
            outcome=report.outcome, total=report.total, failed=report.failed,
            nodes=[NodeEntry.of(r) for r in report.results],
            rollback=None if report.rollback is None else [
                NodeEntry.of(r) for r in report.rollback],
            cause=report.cause)


class OperationLog:
    def __init__(self, kept: int = OPERATIONS_KEPT) -> None:
        self._entries: deque[OperationEntry] = deque(maxlen=kept)

    async def control_done(self, report: ControlReport) -> None:
        self.record(OperationEntry.of(report))

    def record(self, entry: OperationEntry) -> None:
        self._entries.appendleft(entry)

    def recent(self) -> list[OperationEntry]:
        return list(self._entries)
