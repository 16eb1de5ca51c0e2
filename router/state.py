"""What every route of one router process shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from router.config import RouterSettings
from router.fanout import ControlPlane
from router.pd.proxy import GenerationProxy
from router.poller import StatusPoller
from router.registry import FleetRegistry
from router.security import AdminGuard
from router.upstream import NodeClient


@dataclass
class RouterState:
    settings: RouterSettings
    registry: FleetRegistry
    session: NodeClient
    control: ControlPlane
    proxy: GenerationProxy
    poller: StatusPoller
    admin: AdminGuard


def router_state(request: Request) -> RouterState:
    return request.app.state.router


State = Annotated[RouterState, Depends(router_state)]
