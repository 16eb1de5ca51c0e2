"""What monitoring reads: Prometheus metrics and the log of recent control operations."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel

from router.metrics import CONTENT_TYPE
from router.operations import OperationEntry
from router.state import State

router = APIRouter()


class RecentOperations(BaseModel):
    operations: list[OperationEntry]


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(state: State) -> Response:
    """Prometheus text exposition: the router's counters and the fleet's state."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/cluster/operations")
async def cluster_operations(state: State) -> RecentOperations:
    """The last 50 control operations, newest first, each with its per-node report."""
    return RecentOperations(operations=state.operations.recent())
