"""Which nodes serve a generation request, and why none can.

Rule: a routable prefill/decode pair is preferred; mixed nodes serve requests alone when no
pair is routable (a fleet of only mixed nodes is a plain load balancer). "Routable" is the
registry's word: not down, not sleeping; a node not yet polled counts as routable.

Weight versions (router/registry.py says how the fleet's version is known): with
`version_policy: latest` only nodes at the fleet's version serve, so after an update that
failed on some nodes traffic goes to the updated ones only; with `any` every version serves.
Either way a prefill and a decode node of different versions never make a pair: the decode
node would continue a prompt's KV that other weights computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdfleet.vocabulary import Role
from router.config import Policy, VersionPolicy
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


class VersionsApart(NoRoute):
    """A route would exist if weight versions did not matter."""


_NOT_KNOWN = object()  # the version of a node that has not said it yet


def pairing_version(node: Node) -> object:
    """What must be equal for `node` to pair with another while some node is stale: its
    weight version; a node that has not said its own pairs only with another such node."""
    return node.weight_version if node.weight_version_known else _NOT_KNOWN


def version_text(node: Node) -> str:
    """The node and its weight version, as the 503 names them."""
    if not node.weight_version_known:
        return f"{node.url} (version not known yet)"
    version = "none" if node.weight_version is None else repr(node.weight_version)
    return f"{node.url} ({version})"


class Placer:
    def __init__(self, registry: FleetRegistry, policy: Policy,
                 version_policy: VersionPolicy = VersionPolicy.LATEST) -> None:
        self._registry = registry
        self._latest = version_policy is VersionPolicy.LATEST
        self._prefill = make_policy(policy)
        self._decode = make_policy(policy)
        self._mixed = make_policy(policy)

    def place(self) -> Placement:
        registry = self._registry
        # Versions matter only where some node is not at the fleet's (rarely: after a
        # failed or partial update, or during a refit). Under `latest` the candidates are
        # then the nodes at the fleet's version, and any two of them pair.
        apart = not registry.all_at_version
        only_current = apart and self._latest
        prefill: list[Node] = []
        decode: list[Node] = []
        mixed: list[Node] = []
        by_role = {Role.PREFILL: prefill, Role.DECODE: decode, Role.MIXED: mixed}
        for node in registry.all():
            if node.routable and (not only_current or registry.current(node)):
                by_role[node.role].append(node)
        if prefill and decode:
            if not apart or self._latest:
                return Placement(decode=self._decode.pick(decode),
                                 prefill=self._prefill.pick(prefill))
            placement = self._same_version_pair(prefill, decode)
            if placement is not None:
                return placement
        if mixed:
            return Placement(decode=self._mixed.pick(mixed))
        raise self.why_not()

    def _same_version_pair(self, prefill: list[Node], decode: list[Node]) -> Placement | None:
        """A decode node by policy among those with a prefill node of their version, and
        such a prefill node by policy; None when no two share a version."""
        versions = {pairing_version(p) for p in prefill}
        paired = [d for d in decode if pairing_version(d) in versions]
        if not paired:
            return None
        chosen = self._decode.pick(paired)
        version = pairing_version(chosen)
        partners = [p for p in prefill if pairing_version(p) == version]
        return Placement(decode=chosen, prefill=self._prefill.pick(partners))

    def why_not(self) -> NoRoute:
        """Why no route exists now: weight versions apart, the cluster sleeps, or too few
        nodes are up."""
        nodes = self._registry.all()
        if not nodes:
            return NoRoute("no nodes are registered")
        routable = {role: [n for n in nodes if n.routable and n.role is role] for role in Role}
        if (routable[Role.PREFILL] and routable[Role.DECODE]) or routable[Role.MIXED]:
            return self._versions_apart(routable)
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

    def _versions_apart(self, routable: dict[Role, list[Node]]) -> VersionsApart:
        """Routable nodes exist, but none (no pair) at one weight version."""
        if self._latest:
            fleet_version = self._registry.weight_version
            stale = ", ".join(version_text(n) for n in self._registry.stale())
            return VersionsApart(
                f"no routable prefill/decode pair or mixed node is at the fleet's weight "
                f"version {fleet_version!r} (version_policy latest); stale nodes: {stale}; "
                "update them to it and retry")
        apart = ", ".join(version_text(n) for n in routable[Role.PREFILL] + routable[Role.DECODE])
        return VersionsApart(
            "no routable prefill and decode node are at one weight version, and no mixed "
            f"node is routable: {apart}")
