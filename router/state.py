"""What every route of one router process shares."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from fastapi import Request

from router.config import RouterSettings
from router.fanout import ControlPlane
from router.poller import StatusPoller
from router.registry import FleetRegistry
from router.security import AdminGuard


@dataclass
class RouterState:
    settings: RouterSettings
    registry: FleetRegistry
    session: aiohttp.ClientSession
    control: ControlPlane
    poller: StatusPoller
    admin: AdminGuard


def router_state(request: Request) -> RouterState:
    return request.app.state.router
