"""One fleet across the router's worker processes (`pdfleet router --workers N`).

Each worker is a full router with its own registry. What must agree across them travels over
private channels in the router's run directory (mode 0700, so only the router's user can reach
them; never the public port): one unix socket per worker, one JSON line per message (a
`PeerMessage`, validated on receipt), one `{"ok": true}` line back once the message is applied.

- Control operations: one at a time across all workers (router/control/lock.py). After the
  fan-out, `Peers` (one of the control plane's observers) sends what the worker recorded for
  each target node to every peer and waits (bounded) for their acks before the reply: no
  worker routes to a node the fleet has just put to sleep, or keeps one asleep that it has
  just woken. A weight update's version travels with it, so every worker serves the version
  the update named.
- Node additions and removals: under `members.lock` (waited for, briefly), applied here, then
  sent to every peer and acked before the reply.

A router of one process has no place among workers: every method reduces to the local
registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from pdfleet.retry import RetryPolicy, retry
from router.config import NodeSpec
from router.control.lock import ControlLock, try_flock, unlock
from router.control.report import ControlReport
from router.operations import OperationEntry
from router.registry import FleetRegistry, Node, RecordedControl, version_named

log = logging.getLogger("pdfleet.router.peers")

ACK_TIMEOUT_S = 5.0  # a peer that takes longer is hung; the reply does not wait for it
START_TIMEOUT_S = 60.0  # every worker's channel must be up before any serves
MEMBERSHIP_WAIT_S = 2 * ACK_TIMEOUT_S  # a membership change holds its lock at most one round
CHANNEL_LIMIT = 64 << 20  # one line names every target node: thousands of them at most


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """This process's place among the router's workers, and where their shared files are."""

    run_dir: Path
    index: int
    count: int

    def channel(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"

    @property
    def peers(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    @property
    def control_lock(self) -> Path:
        return self.run_dir / "control.lock"

    @property
    def control_state(self) -> Path:
        return self.run_dir / "control.json"

    @property
    def members_lock(self) -> Path:
        return self.run_dir / "members.lock"


class MembershipBusy(Exception):
    """Another worker's node addition or removal did not finish in time."""


class ControlDone(BaseModel):
    """A control operation another worker ran: what it recorded for each target node."""

    kind: Literal["control"] = "control"
    sequence: int
    nodes: list[RecordedControl]
    operation: OperationEntry
    # The fleet's weight version from now on, when the operation was an update that set it.
    weight_version: str | None = None


class NodeAdded(BaseModel):
    kind: Literal["add"] = "add"
    node: NodeSpec


class NodeRemoved(BaseModel):
    kind: Literal["remove"] = "remove"
    url: str


PeerMessage = Annotated[ControlDone | NodeAdded | NodeRemoved, Field(discriminator="kind")]
PEER_MESSAGES: TypeAdapter[PeerMessage] = TypeAdapter(PeerMessage)


class Peers:
    def __init__(
        self,
        registry: FleetRegistry,
        place: WorkerPlace | None,
        control_lock: ControlLock,
        on_peer_operation: Callable[[OperationEntry], None],
    ) -> None:
        """`on_peer_operation` gets every operation run through another worker, after its
        node states are adopted: a per-process operations log records it there (metrics must
        not, or multiprocess counters would count it once per worker)."""
        self._registry = registry
        self._place = place
        self._control_lock = control_lock
        self._on_peer_operation = on_peer_operation
        self._server: asyncio.AbstractServer | None = None
        self._applied_sequence = 0

    async def start(self) -> None:
        """Serve this worker's channel, then wait until every peer serves its own, so no
        change made through one worker can miss another that is still starting."""
        if self._place is None:
            return
        self._server = await asyncio.start_unix_server(
            self._serve, path=self._place.channel(self._place.index), limit=CHANNEL_LIMIT)
        async with asyncio.timeout(START_TIMEOUT_S):
            for index in self._place.peers:
                await self._channel_up(index)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def control_done(self, report: ControlReport) -> None:
        """Send every peer what this worker recorded for the operation's target nodes."""
        if self._place is None:
            return
        recorded = [self._registry.recorded_control(r.server) for r in report.results]
        await self._broadcast(ControlDone(
            sequence=report.sequence, nodes=[r for r in recorded if r is not None],
            operation=OperationEntry.of(report), weight_version=version_named(report)))

    async def add_node(self, spec: NodeSpec) -> Node:
        """Add a node on every worker; KeyError if it is registered already."""
        async with self._membership():
            node = self._registry.add(spec)
            await self._broadcast(NodeAdded(node=spec))
            return node

    async def remove_node(self, url: str) -> Node:
        """Remove a node on every worker; KeyError if it is not registered."""
        async with self._membership():
            node = self._registry.remove(url)
            await self._broadcast(NodeRemoved(url=node.url))
            return node

    @asynccontextmanager
    async def _membership(self) -> AsyncIterator[None]:
        if self._place is None:
            yield
            return
        members_lock = self._place.members_lock

        async def take() -> int:
            lock = try_flock(members_lock)
            if lock is None:
                raise MembershipBusy(
                    f"another worker's node change did not finish within {MEMBERSHIP_WAIT_S} s")
            return lock

        # The holder finishes within one acked round: poll its lock, an flock gives no event.
        lock = await retry(take, RetryPolicy(on=(MembershipBusy,), waits=(0.01,)),
                           asyncio.get_running_loop().time() + MEMBERSHIP_WAIT_S)
        try:
            yield
        finally:
            unlock(lock)

    async def _channel_up(self, index: int) -> None:
        """Return once worker `index` accepts on its channel. Another process's socket
        gives no event to wait on, so poll it."""
        assert self._place is not None
        channel = self._place.channel(index)
        _, writer = await retry(lambda: asyncio.open_unix_connection(channel),
                                RetryPolicy(on=(OSError,), waits=(0.05,)))
        writer.close()

    async def _broadcast(self, message: PeerMessage) -> None:
        """Send `message` to every peer and wait for their acks, each bounded."""
        if self._place is None:
            return
        line = message.model_dump_json().encode() + b"\n"
        peers = self._place.peers
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(self._send(i, line), ACK_TIMEOUT_S) for i in peers),
            return_exceptions=True)
        for index, outcome in zip(peers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("worker %d did not acknowledge %s: %r",
                            index, message.kind, outcome)

    async def _send(self, index: int, line: bytes) -> None:
        assert self._place is not None
        reader, writer = await asyncio.open_unix_connection(
            self._place.channel(index), limit=CHANNEL_LIMIT)
        try:
            writer.write(line)
            await writer.drain()
            ack = json.loads(await reader.readline() or b"{}")
            if ack.get("ok") is not True:
                raise RuntimeError(f"worker {index} answered {ack}")
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if line:
                self._apply(PEER_MESSAGES.validate_json(line))
                writer.write(b'{"ok": true}\n')
                await writer.drain()
        except (OSError, ValueError, KeyError) as exc:
            log.warning("peer message not applied: %r", exc)
        finally:
            writer.close()

    def _apply(self, message: PeerMessage) -> None:
        match message:
            case ControlDone():
                latest = max(self._applied_sequence, self._control_lock.last_sequence)
                if message.sequence <= latest:
                    return  # a late message of an earlier operation
                self._applied_sequence = message.sequence
                for recorded in message.nodes:
                    self._registry.adopt_control(recorded)
                if message.weight_version is not None:
                    self._registry.adopt_updated_version(message.weight_version)
                self._on_peer_operation(message.operation)
            case NodeAdded(node=spec):
                if self._registry.get(spec.url) is None:
                    self._registry.add(spec)
            case NodeRemoved(url=url):
                if self._registry.get(url) is not None:
                    self._registry.remove(url)
