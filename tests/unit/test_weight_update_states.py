"""The memory controller's weight-update states, on a node runtime built in-process (the tiny
model on the cpu backend): updates from SERVING and SLEEPING, refusals, the drain that leaves
frozen requests alone, and the INCOMPLETE state a failed copy leaves."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
import torch

from node.admission import PauseMode
from node.errors import NodeError, NotAdmitted, OperationConflict
from node.memory.controller import BUSY_STATES, TRANSITIONS, NodeState
from node.memory.messages import ReleaseRequest, ResumeRequest
from node.options import NodeOptions
from node.refit.checkpoint import write_checkpoint
from node.refit.messages import WeightUpdate
from node.runtime import NodeRuntime, model_config
from pdfleet.vocabulary import SLEEPING_HEADER, MemoryTag, Operation

pytestmark = pytest.mark.timeout(60)

DISK = Operation.UPDATE_FROM_DISK


@pytest.fixture
def runtime() -> NodeRuntime:
    return NodeRuntime(NodeOptions(memory_backend="cpu", kv_cache_tokens=256, kv_slots=2))


def seed7_flat() -> torch.Tensor:
    """The weights a `--seed 7` node serves."""
    seeded = NodeRuntime(NodeOptions(memory_backend="none", seed=7, kv_cache_tokens=256,
                                     kv_slots=2))
    return seeded.weights.flat


@pytest.fixture
def seed7_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed7.safetensors"
    write_checkpoint(str(path), seed7_flat(), model_config(NodeOptions()).layout())
    return path


async def update(runtime: NodeRuntime, path: Path, **fields: object) -> object:
    with runtime.weights_from_disk(str(path), None) as source:
        return await runtime.controller.update_weights(
            DISK, WeightUpdate.model_validate(fields), source)


def test_every_state_an_update_passes_through_has_a_way_out() -> None:
    assert NodeState.UPDATING in TRANSITIONS[NodeState.DRAINING]
    assert NodeState.UPDATING in TRANSITIONS[NodeState.SLEEPING]
    assert TRANSITIONS[NodeState.UPDATING] == {
        NodeState.SERVING, NodeState.SLEEPING, NodeState.INCOMPLETE}
    # Only a new update leaves INCOMPLETE: a release or resume would serve half-old weights.
    assert TRANSITIONS[NodeState.INCOMPLETE] == {NodeState.UPDATING}
    assert NodeState.UPDATING in BUSY_STATES and NodeState.INCOMPLETE not in BUSY_STATES


async def test_an_update_while_serving_copies_in_place_and_sets_the_version(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    flat = runtime.weights.flat
    address = flat.data_ptr()
    report = await update(runtime, seed7_file, weight_version="v7")
    assert report.weight_version == "v7" and report.flushed_cache  # type: ignore[attr-defined]
    assert runtime.weights.flat.data_ptr() == address
    assert torch.equal(flat, seed7_flat())
    assert runtime.controller.state is NodeState.SERVING
    assert runtime.controller.weight_version == "v7"


async def test_updated_weights_survive_a_release_and_resume_byte_exact(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    await update(runtime, seed7_file)
    await runtime.controller.release(ReleaseRequest())
    await runtime.controller.resume(ResumeRequest())
    assert torch.equal(runtime.weights.flat, seed7_flat())


async def test_an_update_without_a_version_keeps_the_version(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    await update(runtime, seed7_file)
    assert runtime.controller.weight_version == "default"


async def test_an_update_with_only_kv_cache_released_stays_asleep(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.KV_CACHE]))
    report = await update(runtime, seed7_file, weight_version="v7")
    assert not report.flushed_cache  # type: ignore[attr-defined]
    assert runtime.controller.state is NodeState.SLEEPING
    with pytest.raises(NotAdmitted):
        runtime.admission.check()


async def test_an_update_while_weights_are_released_is_refused(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.WEIGHTS]))
    with pytest.raises(OperationConflict, match="resume weights first"):
        await update(runtime, seed7_file)
    assert runtime.controller.state is NodeState.SLEEPING


async def test_a_drain_waits_for_running_requests_but_not_for_frozen_ones(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    admission = runtime.admission
    frozen = admission.register("frozen request")
    admission.pause(PauseMode.IN_PLACE)
    parked = asyncio.create_task(frozen.between_steps())
    running = admission.register("running request")
    await asyncio.sleep(0)  # one turn of the loop: the frozen request parks
    assert admission.frozen == 1
    updating = asyncio.create_task(update(runtime, seed7_file, weight_version="v7"))
    await asyncio.sleep(0)
    assert runtime.controller.state is NodeState.DRAINING
    with pytest.raises(NotAdmitted) as refused:
        admission.check()
    assert SLEEPING_HEADER not in refused.value.headers
    with pytest.raises(OperationConflict, match="another memory operation"):
        await runtime.controller.release(ReleaseRequest())
    running.finish()
    report = await updating
    assert report.drained_requests == 1 and report.frozen_requests == 1  # type: ignore[attr-defined]
    assert not parked.done()
    admission.unpause()
    await parked
    frozen.finish()


async def test_a_drain_that_times_out_changes_nothing(
    runtime: NodeRuntime, seed7_file: Path
) -> None:
    before = runtime.weights.flat.clone()
    running = runtime.admission.register("running request")
    with pytest.raises(OperationConflict, match="the weights were not changed"):
        await update(runtime, seed7_file, drain_timeout_s=0.01)
    assert runtime.controller.state is NodeState.SERVING
    runtime.admission.check()
    assert torch.equal(runtime.weights.flat, before)
    running.finish()


async def test_a_copy_that_fails_part_way_leaves_the_node_incomplete_until_an_update(
    runtime: NodeRuntime, seed7_file: Path, tmp_path: Path
) -> None:
    shrinking = Path(shutil.copy(seed7_file, tmp_path / "shrinking.safetensors"))
    running = runtime.admission.register("running request")
    updating = asyncio.create_task(update(runtime, shrinking, weight_version="v7"))
    await asyncio.sleep(0)
    assert runtime.controller.state is NodeState.DRAINING  # the file passed its check
    os.truncate(shrinking, os.stat(shrinking).st_size // 2)
    running.finish()
    with pytest.raises(NodeError, match="weights incomplete after a failed update"):
        await updating
    assert runtime.controller.state is NodeState.INCOMPLETE
    assert runtime.controller.weight_version is None
    with pytest.raises(NotAdmitted, match="weights incomplete") as refused:
        runtime.admission.check()
    assert SLEEPING_HEADER not in refused.value.headers
    for refused_operation in (runtime.controller.release(ReleaseRequest()),
                              runtime.controller.resume(ResumeRequest())):
        with pytest.raises(OperationConflict, match="weights incomplete"):
            await refused_operation

    await update(runtime, seed7_file, weight_version="v7")
    assert runtime.controller.state is NodeState.SERVING
    assert runtime.controller.weight_version == "v7"
    runtime.admission.check()
