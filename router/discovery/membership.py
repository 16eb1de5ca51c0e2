"""How discovered pods join and leave the fleet registry.

A pod that becomes a node serves at once while the fleet is awake. When the fleet has tags
released (and `on_join` is `match_fleet`, the default), it joins `joining` instead, taking no
traffic, and is first sent the same release through the control plane, so the operation
shows in `/cluster/operations` like any other and never overlaps one; then it serves (asleep,
until the fleet is resumed). A new replica must not hold the memory a trainer was given. A pod
being deleted drains (no new requests; the ones in flight finish); a pod no longer Ready,
deleted, or no longer selected leaves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque

from pdfleet.vocabulary import Operation, Role
from router.config import OnJoin, RouterSettings
from router.control.lock import OperationInProgress
from router.control.plane import ControlPlane
from router.control.request import ControlRequest
from router.discovery.pods import PodNode
from router.discovery.status import MembershipEvent
from router.registry import FleetRegistry, Health, Node, NodePhase, NodeSource

log = logging.getLogger("router.discovery")

EVENTS_KEPT = 50
LOCK_WAIT_S = 0.05  # an operation holds the control lock; the join waits its turn
# A release that failed on the joining node is tried again after these waits (the last
# repeats) while the pod stays a node: it may still be starting.
RELEASE_RETRY_S = (0.5, 1.0, 2.0, 5.0, 10.0)


def fleet_released_tags(registry: FleetRegistry) -> list[str]:
    """The tags the fleet holds released: those of its serving, reachable nodes whose sleep
    state is known. Any one of them counts, so a fleet that did not all wake still keeps
    a newcomer from taking memory a trainer may be using."""
    tags: set[str] = set()
    for node in registry.all():
        if (node.phase is NodePhase.SERVING and node.health is not Health.DOWN
                and node.sleep_state_known):
            tags |= node.released_tags
    return sorted(tags)


class DiscoveredFleet:
    """The pods each role's watch reports, kept in step with the registry."""

    def __init__(self, registry: FleetRegistry, control: ControlPlane, settings: RouterSettings,
                 on_join: OnJoin) -> None:
        self._registry = registry
        self._control = control
        self._settings = settings
        self._on_join = on_join
        self._nodes: dict[tuple[Role, str], Node] = {}  # (role, pod) -> its node
        self._joins: dict[str, asyncio.Task[None]] = {}
        # Pods whose URL another role's entry of the same pod still holds: relabelled from
        # one role to the other, the new role's watch may tell before the old one's does.
        self._waiting: dict[str, tuple[Role, PodNode]] = {}
        self.events: deque[MembershipEvent] = deque(maxlen=EVENTS_KEPT)

    def count(self, role: Role) -> int:
        return sum(1 for r, _ in self._nodes if r is role)

    def reconcile(self, role: Role, pods: dict[str, PodNode | None]) -> None:
        """A full list of `role`'s pods: each one as it is now; pods not listed are gone."""
        for role_, pod in [key for key in self._nodes if key[0] is role and key[1] not in pods]:
            self.update(role_, pod, None)
        # Read once for the whole list: the pods joining now are not serving, so they do not
        # change it, and reading it per pod would cost the square of the fleet's size.
        released = self._released_tags()
        for pod, found in pods.items():
            self.update(role, pod, found, released)

    def update(self, role: Role, pod: str, found: PodNode | None,
               released: list[str] | None = None) -> None:
        """`pod` (of `role`) is `found` now; None: not a node (not Ready, or deleted).
        `released`: the fleet's released tags, when the caller has read them."""
        node = self._nodes.get((role, pod))
        if node is not None and (found is None or not _same_node(node, found)):
            self._leave(role, pod, node)
            node = None
        self._waiting = {url: entry for url, entry in self._waiting.items()
                         if entry[0] is not role or entry[1].pod != pod}
        if found is None:
            return
        if node is None:
            self._join(role, found, self._released_tags() if released is None else released)
        elif found.draining and not node.draining:
            node.enter(NodePhase.DRAINING)
            self._event(found.pod, node.url, "draining")

    def rejected(self, pod: str, reason: str) -> None:
        self._event(pod, "", "rejected", reason)

    async def stop(self) -> None:
        joins = list(self._joins.values())
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)

    def _released_tags(self) -> list[str]:
        """What a joining node must release first: none with `on_join: none`."""
        return [] if self._on_join is OnJoin.NONE else fleet_released_tags(self._registry)

    def _join(self, role: Role, found: PodNode, released: list[str]) -> None:
        try:
            node = self._registry.add(found.spec, source=NodeSource.KUBERNETES, pod=found.pod,
                                      phase=NodePhase.JOINING)
        except KeyError:
            holder = self._registry.get(found.spec.url)
            if holder is not None and holder.source is NodeSource.KUBERNETES \
                    and holder.pod == found.pod:
                self._waiting[found.spec.url] = (role, found)
            else:
                self.rejected(found.pod, f"{found.spec.url} is already a node of the fleet")
            return
        self._nodes[(role, found.pod)] = node
        if found.draining:
            node.enter(NodePhase.DRAINING)
            self._event(found.pod, node.url, "joined", "draining")
        elif not released:
            node.enter(NodePhase.SERVING)
            self._event(found.pod, node.url, "joined", "serving")
        else:
            self._event(found.pod, node.url, "joined",
                        f"the fleet has released {','.join(released)}: releasing it first")
            task = asyncio.create_task(self._match_fleet(node), name=f"join {node.url}")
            self._joins[node.url] = task
            task.add_done_callback(lambda _: self._joins.pop(node.url, None))

    def _leave(self, role: Role, pod: str, node: Node) -> None:
        del self._nodes[(role, pod)]
        if (join := self._joins.get(node.url)) is not None:
            join.cancel()
        if self._registry.get(node.url) is node:
            self._registry.remove(node.url)
        self._event(pod, node.url, "left")
        if (waiting := self._waiting.pop(node.url, None)) is not None:
            self._join(*waiting, self._released_tags())

    def _serve(self, node: Node, detail: str) -> None:
        node.enter(NodePhase.SERVING)
        self._event(node.pod or "", node.url, "serving", detail)

    async def _match_fleet(self, node: Node) -> None:
        """Release `node` as the fleet is released, then let it serve. The tags are read
        right before the operation takes the control lock, with no wait between, so an
        operation that changes the fleet runs wholly before or wholly after."""
        failures = 0
        while node.phase is NodePhase.JOINING and self._registry.get(node.url) is node:
            tags = fleet_released_tags(self._registry)
            if not tags:
                self._serve(node, "the fleet woke meanwhile")
                return
            request = ControlRequest(
                operation=Operation.RELEASE, body=json.dumps({"tags": tags}).encode(),
                content_type="application/json", tags=tags, role=None,
                timeout_s=self._settings.control_timeout_s,
                cause=f"pod {node.pod} joined a sleeping fleet")
            try:
                report = await self._control.run(request, nodes=[node])
            except OperationInProgress:
                await asyncio.sleep(LOCK_WAIT_S)
                continue
            if report.failed == 0:
                if node.phase is NodePhase.JOINING:
                    self._serve(node, f"released {','.join(tags)} as the fleet")
                return
            detail = report.failures[0].error or report.failures[0].detail
            log.warning("pod %s (%s) joined a sleeping fleet and could not be released: %s",
                        node.pod, node.url, detail)
            await asyncio.sleep(RELEASE_RETRY_S[min(failures, len(RELEASE_RETRY_S) - 1)])
            failures += 1

    def _event(self, pod: str, node: str, event: str, detail: str | None = None) -> None:
        entry = MembershipEvent(at=time.time(), pod=pod, node=node, event=event, detail=detail)
        self.events.appendleft(entry)
        log.info("pod %s %s%s", pod or "?", event, f" ({detail})" if detail else "")


def _same_node(node: Node, found: PodNode) -> bool:
    spec = found.spec
    return (node.url, node.role, node.engine, node.bootstrap_port) == (
        spec.url, spec.role, spec.engine, spec.bootstrap_port)
