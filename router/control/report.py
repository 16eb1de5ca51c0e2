"""A control operation's report: the router's reply, defined once.

`ControlReport` is the whole body of a 200 (every node succeeded) and the `detail` of a 502
(`ControlFailed`): the routes publish it as their reply model, the operations log, the metrics
and the status refresh read it, and the CLI and the chaos harness validate the router's replies
with it. Which fields a report carries says which of the two it is: `success` and a count of
`succeeded` nodes in a 200; `message`, the `succeeded` nodes' URLs, `failures` and, when asked
for, `rollback` in a 502. A `NodeResult` likewise carries the fields of what happened to its
node. Serialize with `body()`, which leaves out the fields a report or row does not carry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema

from pdfleet.vocabulary import Operation, Role
from router.control.outcome import Answered, NodeOutcome, NoOp, TransportFailed, Unsupported
from router.http.errors import FailureKind

OperationOutcome = Literal["success", "partial", "failure"]
# `http`: the node answered non-2xx; otherwise how its transport failed.
NodeFailureKind = Literal["http"] | FailureKind


class NodeResult(BaseModel):
    """One node's part in a control operation."""

    server: str
    role: Role
    elapsed_ms: float
    status: int | None = Field(None, description="The node's HTTP status; null: no call was "
                                                 "needed.")
    result: Any = Field(None, description="The node's JSON reply (at most 64 KiB), else null.")
    detail: str | None = Field(None, description="The node's error body, capped.")
    error: str | None = Field(None, description="No HTTP answer: transport failure, or an "
                                                "operation the node's engine cannot do.")
    kind: NodeFailureKind | None = None
    rank_offset: int | None = Field(
        None, description="init_weights_update_group: the node's first rank in the group.")
    # When the node's call began and ended, in ms from the operation's start: the operations
    # log's timeline, not part of the reply.
    started_ms: SkipJsonSchema[float] = Field(0.0, exclude=True)
    ended_ms: SkipJsonSchema[float] = Field(0.0, exclude=True)

    @classmethod
    def of(cls, server: str, role: Role, outcome: NodeOutcome, *,
           started_ms: float, ended_ms: float, rank_offset: int | None = None) -> NodeResult:
        node: dict[str, Any] = {"server": server, "role": role, "started_ms": started_ms,
                                "ended_ms": ended_ms}
        if rank_offset is not None:  # set only where there is one: body() leaves unset out
            node["rank_offset"] = rank_offset
        match outcome:
            case Answered(ok=True):
                return cls(**node, elapsed_ms=outcome.elapsed_ms, status=outcome.status,
                           result=outcome.result)
            case Answered():
                return cls(**node, elapsed_ms=outcome.elapsed_ms, status=outcome.status,
                           detail=outcome.detail or "", kind="http")
            case TransportFailed():
                return cls(**node, elapsed_ms=outcome.elapsed_ms, error=outcome.error,
                           kind=outcome.kind)
            case NoOp():
                return cls(**node, elapsed_ms=0.0, status=None, result=outcome.result)
            case Unsupported():
                return cls(**node, elapsed_ms=0.0, error=outcome.reason, kind="other")

    @property
    def ok(self) -> bool:
        return self.kind is None

    @property
    def reported_memory(self) -> bool:
        """Whether the node's reply said its memory after the operation (pdfleet nodes do)."""
        return isinstance(self.result, dict) and isinstance(self.result.get("memory"), dict)


class ControlReport(BaseModel):
    """What a control operation did on every node it targeted."""

    success: bool = Field(False, description="Every node succeeded (the 200 reply).")
    message: str | None = Field(None, description="What failed (the 502 reply).")
    operation: Operation
    path: str | None = Field(None, description="fanout: the node route it called.")
    request_id: str
    total: int
    succeeded: int | list[str] = Field(
        description="200: how many nodes succeeded; 502: which ones.")
    failed: int
    failures: list[NodeResult] = Field([], description="The nodes that failed (502).")
    nodes: list[NodeResult] = Field(description="The nodes that succeeded.")
    elapsed_ms: float
    rollback: list[NodeResult] | None = Field(
        None, description="With on_failure=rollback, the resume of the nodes that released.")
    # What only this router keeps, for the operations log and the order of operations.
    tags: SkipJsonSchema[list[str] | None] = Field(None, exclude=True)
    started_at: SkipJsonSchema[float] = Field(0.0, exclude=True)  # wall-clock seconds
    sequence: SkipJsonSchema[int] = Field(0, exclude=True)  # the control lock's count
    # A weight update's version (None: it named none, or not a weight update), for the
    # observer that keeps the fleet's version.
    weight_version: SkipJsonSchema[str | None] = Field(None, exclude=True)
    cause: SkipJsonSchema[str | None] = Field(None, exclude=True)  # see ControlRequest.cause

    @classmethod
    def of(cls, *, operation: Operation, request_id: str, results: list[NodeResult],
           elapsed_ms: float, rollback: list[NodeResult] | None = None,
           tags: list[str] | None = None, started_at: float = 0.0,
           sequence: int = 0, path: str | None = None,
           weight_version: str | None = None, cause: str | None = None) -> ControlReport:
        """The report of `results` (every target node), with the fields of a 200 or a 502."""
        done = [r for r in results if r.ok]
        failures = [r for r in results if not r.ok]
        common: dict[str, Any] = {
            "operation": operation, "request_id": request_id, "total": len(results),
            "failed": len(failures), "nodes": done, "elapsed_ms": elapsed_ms, "tags": tags,
            "started_at": started_at, "sequence": sequence, "weight_version": weight_version,
            "cause": cause}
        if path is not None:  # set only for a fanout: body() leaves unset fields out
            common["path"] = path
        what = operation if path is None else f"{operation} /{path}"
        if not failures:
            return cls(success=True, succeeded=len(results), **common)
        report = cls(
            message=f"{what} failed on {len(failures)}/{len(results)} nodes",
            succeeded=[r.server for r in done], failures=failures, **common)
        if rollback is not None:
            report.rollback = rollback
        return report

    @classmethod
    def from_reply(cls, status: int, body: Any) -> ControlReport | None:
        """The report in a router's control reply (200, or 502 when a node failed); None
        for any other reply."""
        try:
            if status == 200:
                return cls.model_validate(body)
            if status == 502:
                return ControlFailed.model_validate(body).detail
        except ValidationError:
            return None
        return None

    @property
    def results(self) -> list[NodeResult]:
        return [*self.nodes, *self.failures]

    @property
    def outcome(self) -> OperationOutcome:
        if not self.failures:
            return "success"
        return "failure" if len(self.failures) == self.total else "partial"

    def body(self) -> dict[str, Any]:
        """The report as JSON: the fields it carries, each row with the fields it carries."""
        return self.model_dump(mode="json", exclude_unset=True)


class ControlFailed(BaseModel):
    """The 502 reply: a node failed."""

    detail: ControlReport
