"""One fleet across the router's worker processes (`pdfleet router --workers N`).

Each worker is a full router with its own registry. What must agree across them travels over
private channels in the router's run directory (mode 0700, so only the router's user can reach
them; never the public port): one unix socket per worker, one JSON line per message, one
`{"ok": true}` line back once the message is applied.

- Control operations: one at a time across all workers, held by an flock on `control.lock`,
  taken without waiting (a second operation gets 409). `control.json` names the running
  operation for every worker's status view, with a sequence number that orders operations.
  After the fan-out the worker sends what it recorded for each target node to every peer and
  waits (bounded) for their acks before replying: no worker routes to a node the fleet has
  just put to sleep, or keeps one asleep that it has just woken.
- Node additions and removals: under `members.lock` (waited for, briefly), applied here, then
  sent to every peer and acked before the reply.

A router of one process has no place among workers: every method reduces to the local
registry and the control plane's own one-at-a-time rule.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pdfleet.retry import RetryPolicy, retry
from router.config import NodeSpec
from router.fanout import ControlPlane, ControlRequest, FanoutReport, OperationInProgress
from router.registry import FleetRegistry, Health, Node, RecordedControl

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


def _try_flock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if another holds it.
    Each call opens the file anew, so two requests in one process exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class Peers:
    def __init__(
        self,
        registry: FleetRegistry,
        place: WorkerPlace | None,
        on_peer_report: Callable[[FanoutReport], None] | None = None,
    ) -> None:
        """`on_peer_report` gets the report of every operation run through another worker,
        after its node states are adopted: a per-process operations log records it there
        (metrics must not, or multiprocess counters would count it once per worker)."""
        self._registry = registry
        self._place = place
        self._on_peer_report = on_peer_report
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

    def running_operation(self) -> tuple[str, str] | None:
        """The control operation running through any worker, as `control.json` says (a
        router of one process has only its control plane's own)."""
        if self._place is None:
            return None
        running = self._read_control_state().get("running")
        if not isinstance(running, dict):
            return None
        return str(running.get("operation")), str(running.get("request_id"))

    async def run_control(self, control: ControlPlane, request: ControlRequest) -> FanoutReport:
        """Run `request` through this worker's control plane, once no other worker runs
        one, and return its report once every peer has what it recorded."""
        place = self._place
        if place is None:
            return await control.run(request)
        lock = _try_flock(place.control_lock)
        if lock is None:
            raise OperationInProgress(*(self.running_operation() or ("another", "unknown")))
        try:
            sequence = int(self._read_control_state().get("sequence", 0)) + 1
            self._applied_sequence = sequence
            request_id = uuid.uuid4().hex
            self._write_control_state(sequence, {
                "operation": request.operation, "request_id": request_id,
                "worker": place.index})
            # The nodes the fan-out targets: read before it starts, as the control plane does.
            targets = [node.url for node in self._registry.with_role(request.role)]
            report: FanoutReport | None = None
            try:
                report = await control.run(request, request_id=request_id)
                return report
            finally:
                recorded = [self._registry.recorded_control(url) for url in targets]
                await self._broadcast({
                    "kind": "control", "sequence": sequence,
                    "nodes": [asdict(r) for r in recorded if r is not None],
                    "report": None if report is None else report.model_dump(mode="json")})
                self._write_control_state(sequence, None)
        finally:
            _unlock(lock)

    async def add_node(self, spec: NodeSpec) -> Node:
        """Add a node on every worker; KeyError if it is registered already."""
        async with self._membership():
            node = self._registry.add(spec)
            await self._broadcast({
                "kind": "add", "node": spec.model_dump(mode="json", exclude={"launch"})})
            return node

    async def remove_node(self, url: str) -> Node:
        """Remove a node on every worker; KeyError if it is not registered."""
        async with self._membership():
            node = self._registry.remove(url)
            await self._broadcast({"kind": "remove", "url": node.url})
            return node

    @asynccontextmanager
    async def _membership(self) -> AsyncIterator[None]:
        if self._place is None:
            yield
            return
        members_lock = self._place.members_lock

        async def take() -> int:
            lock = _try_flock(members_lock)
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
            _unlock(lock)

    def _read_control_state(self) -> dict[str, Any]:
        assert self._place is not None
        try:
            state = json.loads(self._place.control_state.read_bytes())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_control_state(self, sequence: int, running: dict[str, Any] | None) -> None:
        assert self._place is not None
        path = self._place.control_state
        partial = path.with_suffix(f".{self._place.index}.tmp")
        partial.write_text(json.dumps({"sequence": sequence, "running": running}))
        os.replace(partial, path)  # readers never see half a file

    async def _channel_up(self, index: int) -> None:
        """Return once worker `index` accepts on its channel. Another process's socket
        gives no event to wait on, so poll it."""
        assert self._place is not None
        channel = self._place.channel(index)
        _, writer = await retry(lambda: asyncio.open_unix_connection(channel),
                                RetryPolicy(on=(OSError,), waits=(0.05,)))
        writer.close()

    async def _broadcast(self, message: dict[str, Any]) -> None:
        """Send `message` to every peer and wait for their acks, each bounded."""
        if self._place is None:
            return
        line = json.dumps(message).encode() + b"\n"
        peers = self._place.peers
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(self._send(i, line), ACK_TIMEOUT_S) for i in peers),
            return_exceptions=True)
        for index, outcome in zip(peers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("worker %d did not acknowledge %s: %r",
                            index, message["kind"], outcome)

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
                self._apply(json.loads(line))
                writer.write(b'{"ok": true}\n')
                await writer.drain()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("peer message not applied: %r", exc)
        finally:
            writer.close()

    def _apply(self, message: dict[str, Any]) -> None:
        kind = message["kind"]
        if kind == "control":
            if message["sequence"] <= self._applied_sequence:
                return  # a late message of an earlier operation
            self._applied_sequence = message["sequence"]
            for recorded in message["nodes"]:
                self._registry.adopt_control(RecordedControl(**{
                    **recorded, "health": Health(recorded["health"]),
                    "released_tags": tuple(recorded["released_tags"])}))
            if message["report"] is not None and self._on_peer_report is not None:
                self._on_peer_report(FanoutReport.model_validate(message["report"]))
        elif kind == "add":
            spec = NodeSpec.model_validate(message["node"])
            if self._registry.get(spec.url) is None:
                self._registry.add(spec)
        elif kind == "remove":
            if self._registry.get(message["url"]) is not None:
                self._registry.remove(message["url"])
        else:
            raise KeyError(f"unknown message kind {kind!r}")
