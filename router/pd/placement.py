"""Which nodes serve a generation request, and why none can.

Rule: a routable prefill/decode pair is preferred; mixed nodes serve requests alone when no
pair is routable (a fleet of only mixed nodes is a plain load balancer). "Routable" is the
registry's word: not down, not sleeping; a node not yet polled counts as routable.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdfleet.vocabulary import Role
from router.config import Policy
from router.policies import make_policy
from router.registry import FleetRegistry, Health, Node


@dataclass(frozen=True, slots=True)
class Placement:
    """`decode` answers the client: a decode node with `prefill` beside it, or a mixed node
    alone (`prefill` is None)."""

    decode: Node
    prefill: Node | None = None


class NoRoute(Exception):
    """No node can take a generation request now."""


class ClusterSleeping(NoRoute):
    """A route would exist if the sleeping nodes were awake."""


class Placer:
    def __init__(self, registry: FleetRegistry, policy: Policy) -> None:
        self._registry = registry
        self._prefill = make_policy(policy)
        self._decode = make_policy(policy)
        self._mixed = make_policy(policy)

    def place(self) -> Placement:
        prefill: list[Node] = []
        decode: list[Node] = []
        mixed: list[Node] = []
        by_role = {Role.PREFILL: prefill, Role.DECODE: decode, Role.MIXED: mixed}
        for node in self._registry.all():
            if node.routable:
                by_role[node.role].append(node)
        if prefill and decode:
            return Placement(decode=self._decode.pick(decode), prefill=self._prefill.pick(prefill))
        if mixed:
            return Placement(decode=self._mixed.pick(mixed))
        raise self.why_not()

    def why_not(self) -> NoRoute:
        """Why no route exists now: the cluster sleeps, or too few nodes are up."""
        nodes = self._registry.all()
        if not nodes:
            return NoRoute("no nodes are registered")
        alive = {role: 0 for role in Role}
        total = {role: 0 for role in Role}
        sleeping = 0
        for node in nodes:
            total[node.role] += 1
            if node.health is not Health.DOWN:
                alive[node.role] += 1
                sleeping += node.sleeping
        would_route = (alive[Role.PREFILL] and alive[Role.DECODE]) or alive[Role.MIXED]
        if would_route and sleeping:
            return ClusterSleeping(
                f"the cluster is sleeping: {sleeping} of {len(nodes)} nodes have released "
                "their memory; resume them (POST /resume_memory_occupation) and retry"
            )
        counts = ", ".join(f"{alive[r]}/{total[r]} {r.value} up" for r in Role if total[r])
        return NoRoute(f"no healthy prefill/decode pair or mixed node ({counts})")
