"""What discovery shows in `/cluster/status` and the metrics: each role's watch and the
recent membership events. Kept apart from the watch itself, so the router's status and
metrics need no Kubernetes client where no discovery is configured."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from pdfleet.vocabulary import Role


class MembershipEvent(BaseModel):
    at: float  # wall-clock seconds
    pod: str
    node: str
    event: Literal["joined", "serving", "draining", "left", "rejected"]
    detail: str | None = None


class WatchState(StrEnum):
    STARTING = "starting"
    LISTING = "listing"
    WATCHING = "watching"
    BACKING_OFF = "backing_off"  # after an API error


WATCH_TRANSITIONS: dict[WatchState, frozenset[WatchState]] = {
    WatchState.STARTING: frozenset({WatchState.LISTING, WatchState.BACKING_OFF}),
    # listing again: the resync period ran out while a slow list was still reading
    WatchState.LISTING: frozenset({WatchState.LISTING, WatchState.WATCHING,
                                   WatchState.BACKING_OFF}),
    WatchState.WATCHING: frozenset({WatchState.LISTING, WatchState.BACKING_OFF}),
    WatchState.BACKING_OFF: frozenset({WatchState.LISTING, WatchState.BACKING_OFF}),
}


class RoleWatchStatus(BaseModel):
    role: Role
    selector: str
    state: WatchState
    nodes: int  # pods of this role in the fleet now
    resource_version: str | None
    lists: int  # full lists made (the first, resyncs, after a cut watch or a 410)
    events: int  # watch events applied
    errors: int
    last_error: str | None
    last_error_at: float | None
    listed_at: float | None


class DiscoveryStatus(BaseModel):
    """Kubernetes discovery as `/cluster/status` shows it."""

    source: str = "kubernetes"
    namespace: str | None
    roles: list[RoleWatchStatus]
    recent: list[MembershipEvent]  # joins, drains, leaves and rejected pods, newest first
