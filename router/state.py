"""What every route of one router process shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from router.config import RouterSettings
from router.control.plane import ControlPlane
from router.http.pool import NodeClient
from router.metrics import RouterMetrics
from router.operations import OperationLog
from router.pd.proxy import GenerationProxy
from router.peers import Peers
from router.poller import StatusPoller
from router.registry import FleetRegistry
from router.security import AdminGuard

if TYPE_CHECKING:  # loaded only by a router that discovers pods (router/app.py)
    from router.discovery.kubernetes import KubernetesWatcher


@dataclass
class RouterState:
    settings: RouterSettings
    registry: FleetRegistry
    session: NodeClient
    control: ControlPlane
    proxy: GenerationProxy
    poller: StatusPoller
    admin: AdminGuard
    metrics: RouterMetrics
    operations: OperationLog
    peers: Peers
    discovery: KubernetesWatcher | None = None


def router_state(request: Request) -> RouterState:
    return request.app.state.router


State = Annotated[RouterState, Depends(router_state)]
