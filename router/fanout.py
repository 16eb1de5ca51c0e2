"""Cluster control fan-out: one memory operation sent to every target node at once.

The body goes to each node verbatim, all nodes are called concurrently under one deadline,
and the caller gets a `FanoutReport` that names every node that failed and why. One control
operation runs at a time per router, since interleaved sleeps and wakes leave a fleet in a
state nobody asked for.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from router.config import Role, RouterSettings
from router.registry import FleetRegistry, Node
from router.upstream import ConnectionRefused, NodeClient, TransportError, call_node

RESULT_MAX_BYTES = 64 << 10
ROLLBACK_OPERATION = "resume_memory_occupation"


class NodeResult(BaseModel):
    server: str
    role: str
    elapsed_ms: float
    status: int | None = None
    result: Any = None
    detail: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def success_view(self) -> dict[str, Any]:
        return self.model_dump(include={"server", "role", "status", "elapsed_ms", "result"})

    def failure_view(self) -> dict[str, Any]:
        if self.error is not None:
            return self.model_dump(include={"server", "role", "error", "elapsed_ms"})
        return self.model_dump(include={"server", "role", "status", "detail", "elapsed_ms"})


class FanoutReport(BaseModel):
    operation: str
    request_id: str
    elapsed_ms: float
    results: list[NodeResult]
    rollback: list[NodeResult] | None = None

    @property
    def failures(self) -> list[NodeResult]:
        return [r for r in self.results if not r.ok]

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
    operation: str
    body: bytes
    content_type: str | None
    tags: list[str] | None
    role: Role | None
    timeout_s: float
    rollback: bool = False
    authorization: str | None = None


class OperationInProgress(Exception):
    def __init__(self, operation: str, request_id: str) -> None:
        super().__init__(f"another control operation is running: {operation} ({request_id})")


def _json_result(body: bytes, truncated: bool) -> Any:
    if not body or truncated:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _reported_tags(result: Any) -> list[str] | None:
    if isinstance(result, dict) and isinstance(result.get("released_tags"), list):
        return [str(t) for t in result["released_tags"]]
    return None


class ControlPlane:
    def __init__(
        self, registry: FleetRegistry, session: NodeClient, settings: RouterSettings
    ) -> None:
        self._registry = registry
        self._session = session
        self._settings = settings
        self._running: tuple[str, str] | None = None

    @property
    def running(self) -> tuple[str, str] | None:
        return self._running

    async def run(self, request: ControlRequest) -> FanoutReport:
        if self._running is not None:
            raise OperationInProgress(*self._running)
        request_id = uuid.uuid4().hex
        self._running = (request.operation, request_id)
        try:
            return await self._run(request, request_id)
        finally:
            self._running = None

    async def _run(self, request: ControlRequest, request_id: str) -> FanoutReport:
        started = time.perf_counter()
        nodes = self._registry.with_role(request.role)
        results = await self._fan_out(
            nodes, request.operation, request.body, request, request_id, request.tags
        )
        report = FanoutReport(
            operation=request.operation,
            request_id=request_id,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
            results=results,
        )
        rollback = request.rollback and request.operation == "release_memory_occupation"
        if rollback and report.failures:
            released = [n for n, r in zip(nodes, results, strict=True) if r.ok]
            body = json.dumps({"tags": request.tags}).encode()
            report.rollback = await self._fan_out(
                released, ROLLBACK_OPERATION, body, request, request_id, request.tags,
                content_type="application/json",
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
        content_type: str | None = None,
    ) -> list[NodeResult]:
        headers = {"X-Request-Id": request_id}
        if content_type or request.content_type:
            headers["Content-Type"] = content_type or request.content_type or ""
        if request.authorization:
            headers["Authorization"] = request.authorization
        deadline = asyncio.get_running_loop().time() + request.timeout_s
        calls = [self._call(n, operation, body, headers, deadline, tags) for n in nodes]
        return list(await asyncio.gather(*calls))

    async def _call(
        self,
        node: Node,
        operation: str,
        body: bytes,
        headers: dict[str, str],
        deadline: float,
        tags: list[str] | None,
    ) -> NodeResult:
        started = time.perf_counter()
        base = {"server": node.url, "role": node.role.value}
        try:
            reply = await call_node(
                self._session,
                "POST",
                f"{node.url}/{operation}",
                deadline=deadline,
                body=body,
                headers=headers,
                max_body=RESULT_MAX_BYTES,
                max_error_body=self._settings.error_detail_bytes,
            )
        except TransportError as exc:
            result = NodeResult(
                **base, elapsed_ms=round((time.perf_counter() - started) * 1000, 2), error=str(exc)
            )
            if isinstance(exc, ConnectionRefused):
                self._registry.mark_down(node, str(exc))
            self._registry.record_control(node, operation, tags, error=str(exc))
            return result
        elapsed = round(reply.elapsed_ms, 2)
        if not reply.ok:
            detail = reply.text()
            self._registry.record_control(
                node, operation, tags, error=f"HTTP {reply.status}: {detail}"
            )
            return NodeResult(**base, elapsed_ms=elapsed, status=reply.status, detail=detail)
        result = _json_result(reply.body, reply.truncated)
        self._registry.record_control(
            node, operation, tags, error=None, reported_tags=_reported_tags(result)
        )
        return NodeResult(**base, elapsed_ms=elapsed, status=reply.status, result=result)
