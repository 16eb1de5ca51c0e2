"""The fleet registry: every node the router knows, and what it knows of each.

This is where the fleet's state lives. Two sources write it: control operations (at once,
from each node's reply) and the status poller (periodically). A poll that started before a
control operation changed a node must not overwrite what the operation learned, so each
node carries a version that control operations bump.

Weight versions: each node serves the weights of one version (a string, or None where the
node names none), learned from polls and from weight updates. The fleet's version is the
one the latest weight update through this router named (through any of its worker
processes); a router that made none (just started, or a replica beside the router that did)
takes the version most nodes report, a tie going to the version that sorts last in natural
order (`step-10` after `step-9`), so replicas seeing the same nodes agree. A node not at the
fleet's version is stale: placement leaves it out (`version_policy: latest`). A node whose
version is not known (not polled yet, or a vLLM server, which names none, that no update
through this router reached) counts as at the fleet's version unless a weight update named
that version: a mixed SGLang + vLLM fleet serves from every node until its first refit.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from pdfleet.vocabulary import (
    DEFAULT_ENGINE,
    MEMORY_TAGS,
    WEIGHT_UPDATES,
    EngineName,
    Operation,
    Role,
)
from router.config import NodeSpec
from router.control.outcome import Answered, NodeOutcome, NoOp, TransportFailed, Unsupported
from router.control.report import ControlReport

log = logging.getLogger("router.registry")


class Health(StrEnum):
    UNKNOWN = "unknown"  # not polled yet: routable until shown down
    UP = "up"
    DOWN = "down"


class NodeSource(StrEnum):
    """Who put the node in the fleet, and so who may take it out."""

    STATIC = "static"  # the config file or POST /workers
    KUBERNETES = "kubernetes"  # discovered: the cluster owns it


class NodePhase(StrEnum):
    """Where a node is in its membership; only a serving node takes new requests."""

    JOINING = "joining"  # found, not yet matched to the fleet (e.g. released as it sleeps)
    SERVING = "serving"
    DRAINING = "draining"  # on its way out: in-flight requests finish, no new ones


PHASE_TRANSITIONS: dict[NodePhase, frozenset[NodePhase]] = {
    NodePhase.JOINING: frozenset({NodePhase.SERVING, NodePhase.DRAINING}),
    NodePhase.SERVING: frozenset({NodePhase.DRAINING}),
    NodePhase.DRAINING: frozenset(),
}


@dataclass
class Node:
    url: str
    role: Role
    bootstrap_port: int | None = None
    engine: EngineName = DEFAULT_ENGINE
    health: Health = Health.UNKNOWN
    released_tags: frozenset[str] = frozenset()
    sleep_state_known: bool = False
    memory: dict[str, Any] | None = None
    node_inflight: int | None = None
    outstanding: int = 0  # requests this router has in flight on the node
    last_op: str | None = None
    last_error: str | None = None
    checked_at: float | None = None
    latency_ms: float | None = None
    version: int = 0  # bumped by each control operation: see the module's docstring
    ranks: int = 1  # ranks in a weights-update group
    # The weights it serves (a string, or None when it names none); known once a poll or an
    # update said. Written through `FleetRegistry.set_weight_version`, which keeps the
    # fleet's version current.
    weight_version: str | None = None
    weight_version_known: bool = False
    source: NodeSource = NodeSource.STATIC
    pod: str | None = None  # the pod it runs in, when discovered
    phase: NodePhase = NodePhase.SERVING

    @property
    def sleeping(self) -> bool:
        return bool(self.released_tags)

    @property
    def draining(self) -> bool:
        return self.phase is NodePhase.DRAINING

    @property
    def routable(self) -> bool:
        return (self.health is not Health.DOWN and not self.sleeping
                and self.phase is NodePhase.SERVING)

    def enter(self, phase: NodePhase) -> None:
        """Move to `phase`; ValueError for a move the phases do not allow."""
        if phase is not self.phase and phase not in PHASE_TRANSITIONS[self.phase]:
            raise ValueError(f"node {self.url}: {self.phase} cannot become {phase}")
        self.phase = phase

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")

    def at_version(self, fleet_version: str | None, updated: bool) -> bool:
        """Whether the node serves the fleet's weights (`fleet_version`: the fleet's, None
        while it has none; `updated`: a weight update named it)."""
        if fleet_version is None:
            return True
        if not self.weight_version_known:
            return not updated
        return self.weight_version == fleet_version

    def status_view(self, stale: bool) -> NodeStatus:
        unknown: Unknown = "unknown"
        return NodeStatus(
            server=self.url,
            role=self.role,
            engine=self.engine,
            health=self.health,
            reachable=unknown if self.health is Health.UNKNOWN else self.health is Health.UP,
            sleeping=self.sleeping if self.sleep_state_known else unknown,
            released_tags=sorted(self.released_tags) if self.sleep_state_known else unknown,
            memory=self.memory if self.memory is not None else unknown,
            inflight=self.node_inflight if self.node_inflight is not None else unknown,
            outstanding=self.outstanding,
            last_op=self.last_op,
            last_error=self.last_error,
            checked_at=self.checked_at,
            latency_ms=self.latency_ms,
            bootstrap_port=self.bootstrap_port,
            weight_version=self.weight_version if self.weight_version_known else unknown,
            stale=stale,
            source=self.source,
            pod=self.pod,
            phase=self.phase,
            draining=self.draining,
        )


# What the router has not learned yet, in the status view.
Unknown = Literal["unknown"]


class NodeStatus(BaseModel):
    """One node as `GET /cluster/status` shows it."""

    server: str
    role: Role
    engine: EngineName
    health: Health
    reachable: bool | Unknown
    sleeping: bool | Unknown
    released_tags: list[str] | Unknown
    memory: dict[str, Any] | Unknown
    inflight: int | Unknown
    outstanding: int  # requests this router process has in flight on the node
    last_op: str | None
    last_error: str | None
    checked_at: float | None
    latency_ms: float | None
    bootstrap_port: int | None
    weight_version: str | Unknown | None = Field(
        description="The weights it serves; null: it names none.")
    stale: bool = Field(description="Not at the fleet's weight version: not served while "
                                    "version_policy is latest.")
    source: NodeSource
    pod: str | None
    phase: NodePhase
    draining: bool


class FleetSummary(BaseModel):
    total: int
    up: int
    down: int
    sleeping: int
    routable: int
    stale: int


class RecordedControl(BaseModel, frozen=True):
    """What a control operation (and any refresh of the node right after it) left recorded
    about one node: what the router's other worker processes adopt, so they see the node
    as this one does. Only this process's own traffic (`outstanding`) is left out."""

    url: str
    health: Health
    released_tags: tuple[str, ...]
    sleep_state_known: bool
    last_op: str | None
    last_error: str | None
    memory: dict[str, Any] | None
    node_inflight: int | None
    checked_at: float | None
    latency_ms: float | None
    weight_version: str | None = None
    weight_version_known: bool = False


def tags_after(op: Operation, current: frozenset[str], tags: list[str] | None) -> frozenset[str]:
    """What a node has released after `op` with `tags`, when its reply does not say."""
    if op == Operation.RELEASE:
        return frozenset(MEMORY_TAGS) if tags is None else current | set(tags)
    if op == Operation.RESUME:
        return frozenset() if tags is None else current - set(tags)
    return current


def version_named(report: ControlReport) -> str | None:
    """The version `report`'s operation makes the fleet's: the one a weight update named,
    once it took on at least one node (answered or had it already); else None."""
    version: str | None = getattr(report, "weight_version", None)
    if report.operation in WEIGHT_UPDATES and version is not None and report.nodes:
        return version
    return None


def _natural_order(version: str) -> list[tuple[int, str]]:
    """`version` as a sort key in which its numbers compare as numbers."""
    return [(int(part), "") if part.isdigit() else (-1, part)
            for part in re.split(r"(\d+)", version)]


def most_reported(versions: list[str]) -> str | None:
    """The version most of `versions` are; a tie goes to the one last in natural order."""
    counts = Counter(versions)
    if not counts:
        return None
    return max(counts, key=lambda v: (counts[v], _natural_order(v)))


class FleetRegistry:
    def __init__(self, specs: list[NodeSpec] | None = None) -> None:
        self._nodes: dict[str, Node] = {}
        # The version the latest weight update through this router named: see the module's
        # docstring.
        self._updated_version: str | None = None
        # The fleet's version and whether every node is at it, counted again (on the next
        # request that asks) once a node's version, the nodes or the named version change:
        # placement asks on every generation request.
        self._version: str | None = None
        self._all_at_version = True
        self._counted = True
        for spec in specs or []:
            self.add(spec)

    def _count_versions(self) -> None:
        if self._counted:
            return
        nodes = self._nodes.values()
        self._version = self._updated_version
        if self._version is None:
            self._version = most_reported([
                n.weight_version for n in nodes
                if n.weight_version_known and n.weight_version is not None])
        self._all_at_version = all(
            n.at_version(self._version, self._updated_version is not None) for n in nodes)
        self._counted = True

    def current(self, node: Node) -> bool:
        """Whether `node` is at the fleet's weight version (not stale)."""
        self._count_versions()
        return node.at_version(self._version, self._updated_version is not None)

    @property
    def weight_version(self) -> str | None:
        """The fleet's weight version; None while it has none."""
        self._count_versions()
        return self._version

    @property
    def all_at_version(self) -> bool:
        """Whether no node is stale (the usual case, in which versions change no placement)."""
        self._count_versions()
        return self._all_at_version

    @property
    def updated_version(self) -> str | None:
        """The version the latest weight update through this router named, if any."""
        return self._updated_version

    def adopt_updated_version(self, version: str) -> None:
        """A weight update through this router (or another of its workers) named `version`."""
        self._updated_version = version
        self._counted = False

    async def control_done(self, report: ControlReport) -> None:
        """As a control observer: a weight update sets the fleet's version."""
        version = version_named(report)
        if version is not None:
            self.adopt_updated_version(version)

    def stale(self) -> list[Node]:
        """The nodes not at the fleet's weight version."""
        self._count_versions()
        return [n for n in self._nodes.values() if not self.current(n)]

    def set_weight_version(self, node: Node, version: str | None) -> None:
        node.weight_version = version
        node.weight_version_known = True
        self._counted = False

    def add(self, spec: NodeSpec, source: NodeSource = NodeSource.STATIC, pod: str | None = None,
            phase: NodePhase = NodePhase.SERVING) -> Node:
        if spec.url in self._nodes:
            raise KeyError(spec.url)
        node = Node(url=spec.url, role=spec.role, bootstrap_port=spec.bootstrap_port,
                    engine=spec.engine, ranks=spec.ranks, source=source, pod=pod, phase=phase)
        self._nodes[spec.url] = node
        self._counted = False
        return node

    def remove(self, url: str) -> Node:
        node = self._nodes.pop(url.rstrip("/"))
        self._counted = False
        return node

    def get(self, url: str) -> Node | None:
        return self._nodes.get(url.rstrip("/"))

    def all(self) -> list[Node]:
        return list(self._nodes.values())

    def with_role(self, role: Role | None) -> list[Node]:
        return [n for n in self._nodes.values() if role is None or n.role is role]

    def record_control(
        self, node: Node, op: Operation, tags: list[str] | None, outcome: NodeOutcome
    ) -> None:
        """Record what `op` with `tags` did to `node`, at once: on success its released tags
        (as the node reported them, else inferred) and, where it reported it, its memory."""
        node.version += 1
        node.last_op = op
        match outcome:
            case TransportFailed(error=error, kind="refused"):
                self.mark_down(node, error)
            case TransportFailed(error=error) | Unsupported(reason=error):
                node.last_error = error
            case Answered(ok=False, status=status, detail=detail):
                node.last_error = f"HTTP {status}: {detail or ''}"
            case NoOp():
                node.last_error = None
                node.health = Health.UP
                node.sleep_state_known = True
            case Answered():
                node.last_error = None
                node.health = Health.UP
                if outcome.weight_version is not None:
                    self.set_weight_version(node, outcome.weight_version)
                if outcome.memory is not None:
                    node.memory = outcome.memory
                if outcome.released_tags is not None:
                    node.released_tags = frozenset(outcome.released_tags)
                    node.sleep_state_known = True
                elif op != Operation.FLUSH:
                    node.released_tags = tags_after(op, node.released_tags, tags)
                    node.sleep_state_known = True

    def recorded_control(self, url: str) -> RecordedControl | None:
        node = self.get(url)
        if node is None:
            return None
        return RecordedControl(
            url=node.url, health=node.health, released_tags=tuple(sorted(node.released_tags)),
            sleep_state_known=node.sleep_state_known, last_op=node.last_op,
            last_error=node.last_error, memory=node.memory, node_inflight=node.node_inflight,
            checked_at=node.checked_at, latency_ms=node.latency_ms,
            weight_version=node.weight_version,
            weight_version_known=node.weight_version_known,
        )

    def adopt_control(self, recorded: RecordedControl) -> None:
        """Take what another worker's control operation recorded; a poll that began
        before this must not overwrite it, as after `record_control`."""
        node = self.get(recorded.url)
        if node is None:
            return  # removed meanwhile
        node.version += 1
        node.health = recorded.health
        node.released_tags = frozenset(recorded.released_tags)
        node.sleep_state_known = recorded.sleep_state_known
        node.last_op = recorded.last_op
        node.last_error = recorded.last_error
        node.memory = recorded.memory
        node.node_inflight = recorded.node_inflight
        node.checked_at = recorded.checked_at
        node.latency_ms = recorded.latency_ms
        if recorded.weight_version_known:
            self.set_weight_version(node, recorded.weight_version)

    def record_poll(
        self,
        node: Node,
        version: int,
        *,
        reachable: bool,
        latency_ms: float,
        released_tags: list[str] | None,
        memory: dict[str, Any] | None,
        inflight: int | None,
        error: str | None,
        weight_version: str | None = None,
        weight_version_known: bool = False,
    ) -> None:
        """Record a status poll that began when the node was at `version`; its weight
        version where it said one (`weight_version_known`)."""
        node.checked_at = time.time()
        node.latency_ms = round(latency_ms, 2)
        if not reachable:
            self.mark_down(node, error or "unreachable")
            return
        node.health = Health.UP
        if inflight is not None:
            node.node_inflight = inflight
        if node.version != version:
            return  # what the poll saw of memory and tags predates an operation's change
        if memory is not None:
            node.memory = memory
        if released_tags is not None:
            node.released_tags = frozenset(released_tags)
            node.sleep_state_known = True
        if weight_version_known:
            self.set_weight_version(node, weight_version)

    def mark_asleep(self, node: Node) -> None:
        """`node` said it sleeps (a generation 503 with the sleeping marker), perhaps put to
        sleep through another router: route around it now. The version bump keeps a poll
        already on its way from undoing this; the next poll says which tags it released."""
        node.version += 1
        node.health = Health.UP
        if not node.sleeping:
            node.released_tags = frozenset(MEMORY_TAGS)
        node.sleep_state_known = True

    def mark_down(self, node: Node, error: str) -> None:
        if node.health is not Health.DOWN:  # once per outage, not once per poll
            log.warning("node %s marked down: %s", node.url, error)
        node.health = Health.DOWN
        node.last_error = error

    def summary(self) -> FleetSummary:
        nodes = self.all()
        self._count_versions()
        return FleetSummary(
            total=len(nodes),
            up=sum(n.health is Health.UP for n in nodes),
            down=sum(n.health is Health.DOWN for n in nodes),
            sleeping=sum(n.sleeping for n in nodes),
            routable=sum(n.routable for n in nodes),
            stale=sum(not self.current(n) for n in nodes),
        )
