"""A weight update through one of the router's worker processes sets the fleet's version on
every worker: two `Peers` in one event loop over their real unix-socket channels."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pdfleet.vocabulary import Operation, Role
from router.config import NodeSpec
from router.control.lock import WorkerControlLock
from router.control.outcome import Answered
from router.control.report import ControlReport, NodeResult
from router.peers import Peers, WorkerPlace
from router.registry import FleetRegistry

pytestmark = pytest.mark.timeout(30)

UPDATED, STRAGGLER = "http://127.0.0.1:30001", "http://127.0.0.1:30002"
SPECS = [NodeSpec(url=UPDATED, role=Role.PREFILL), NodeSpec(url=STRAGGLER, role=Role.DECODE)]


@pytest.fixture
async def workers() -> AsyncIterator[list[tuple[FleetRegistry, Peers]]]:
    # A short directory: a unix socket's path has a small length limit.
    with tempfile.TemporaryDirectory(prefix="peers-") as run_dir:
        started = []
        for index in range(2):
            place = WorkerPlace(Path(run_dir), index, 2)
            registry = FleetRegistry(SPECS)
            lock = WorkerControlLock(place.control_lock, place.control_state, index)
            started.append((registry, Peers(registry, place, lock, lambda _: None)))
        # Each worker serves its channel, then waits for the other's.
        await asyncio.gather(*(peers.start() for _, peers in started))
        try:
            yield started
        finally:
            for _, peers in started:
                await peers.stop()


def update_report(registry: FleetRegistry, sequence: int) -> ControlReport:
    """An update to v2 that took on UPDATED and failed on STRAGGLER, recorded in `registry`."""
    outcomes = {UPDATED: Answered(status=200, elapsed_ms=1.0, weight_version="v2"),
                STRAGGLER: Answered(status=500, elapsed_ms=1.0, detail="no such file")}
    results = []
    for url, outcome in outcomes.items():
        node = registry.get(url)
        assert node is not None
        registry.record_control(node, Operation.UPDATE_FROM_DISK, None, outcome)
        results.append(NodeResult.of(url, node.role, outcome, started_ms=0.0, ended_ms=1.0))
    report = ControlReport.of(operation=Operation.UPDATE_FROM_DISK, request_id="r",
                              results=results, elapsed_ms=1.0, sequence=sequence)
    return report.model_copy(update={"weight_version": "v2"})


async def test_the_version_an_update_named_reaches_the_other_worker(workers) -> None:
    (here, here_peers), (there, _) = workers
    for registry in (here, there):
        for node in registry.all():
            registry.set_weight_version(node, "v1")
    report = update_report(here, sequence=1)
    await here.control_done(report)
    await here_peers.control_done(report)
    for registry in (here, there):
        assert registry.weight_version == "v2" and registry.updated_version == "v2"
        assert [n.url for n in registry.stale()] == [STRAGGLER]
    updated = there.get(UPDATED)
    assert updated is not None and updated.weight_version == "v2"


async def test_a_late_message_of_an_earlier_update_changes_nothing(workers) -> None:
    (here, _), (there, there_peers) = workers
    later = update_report(there, sequence=2).model_copy(update={"weight_version": "v3"})
    await there_peers.control_done(later)
    assert here.updated_version == "v3"
    await there_peers.control_done(update_report(there, sequence=1))
    assert here.updated_version == "v3" and here.weight_version == "v3"


async def test_other_operations_leave_the_other_workers_version(workers) -> None:
    (here, _), (there, there_peers) = workers
    report = update_report(there, sequence=1).model_copy(
        update={"operation": Operation.RELEASE})
    await there_peers.control_done(report)
    assert here.updated_version is None
    updated = here.get(UPDATED)
    assert updated is not None and updated.weight_version == "v2"  # the node's, recorded
