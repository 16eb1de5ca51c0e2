"""The log of recent control operations, newest first: what `GET /cluster/operations` serves
and the dashboard's timeline draws (one bar per node, from its start to its end offset).

Each router process keeps its own log of the operations it ran.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from router.fanout import FanoutReport, NodeResult

OPERATIONS_KEPT = 50


def node_entry(result: NodeResult) -> dict[str, Any]:
    return {
        "server": result.server,
        "role": result.role,
        "outcome": "success" if result.ok else "failure",
        "started_ms": result.started_ms,
        "ended_ms": result.ended_ms,
        "status": result.status,
        "error": result.error if result.error is not None else result.detail,
        "kind": result.kind,
    }


def operation_entry(report: FanoutReport) -> dict[str, Any]:
    return {
        "operation": report.operation,
        "request_id": report.request_id,
        "tags": report.tags,
        "started_at": report.started_at,
        "elapsed_ms": report.elapsed_ms,
        "outcome": report.outcome,
        "total": len(report.results),
        "failed": len(report.failures),
        "nodes": [node_entry(r) for r in report.results],
        "rollback": None if report.rollback is None else [node_entry(r) for r in report.rollback],
    }


class OperationLog:
    def __init__(self, kept: int = OPERATIONS_KEPT) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=kept)

    def record(self, report: FanoutReport) -> None:
        self._entries.appendleft(operation_entry(report))

    def recent(self) -> list[dict[str, Any]]:
        return list(self._entries)
