"""The memory controller's state machine, on a node runtime built in-process: the tiny model on
the cpu backend (or the none backend), which release and resume real memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import torch

from node.errors import BackendDisabled, InsufficientMemory, NotAdmitted, OperationConflict
from node.memory.backends.base import RegionState
from node.memory.controller import NodeState
from node.memory.messages import ReleaseRequest, ResumeRequest
from node.options import NodeOptions
from node.runtime import NodeRuntime
from pdfleet.vocabulary import MemoryTag

pytestmark = pytest.mark.timeout(60)

HELD = [MemoryTag.WEIGHTS, MemoryTag.KV_CACHE]  # the tags the reference engine allocates

MakeRuntime = Callable[..., NodeRuntime]


@pytest.fixture
def make_runtime() -> MakeRuntime:
    def make(**options: Any) -> NodeRuntime:
        return NodeRuntime(NodeOptions(**{"memory_backend": "cpu", "kv_cache_tokens": 256,
                                          "kv_slots": 2, **options}))

    return make


@pytest.fixture
def runtime(make_runtime: MakeRuntime) -> NodeRuntime:
    return make_runtime()


def admits(runtime: NodeRuntime) -> bool:
    try:
        runtime.admission.check()
    except NotAdmitted:
        return False
    return True


def region_states(runtime: NodeRuntime) -> dict[MemoryTag, RegionState]:
    return {tag: region.state for tag, region in runtime.backend.stats().regions.items()}


async def test_release_of_every_tag_sleeps_with_admission_closed(runtime: NodeRuntime):
    report = await runtime.controller.release(ReleaseRequest())
    assert sorted(report.released) == sorted(HELD) and report.already_released == []
    assert report.noop_tags == [MemoryTag.CUDA_GRAPH, MemoryTag.WEIGHTS_DRAFTER]
    assert runtime.controller.state is NodeState.SLEEPING
    assert runtime.controller.released_tags == HELD
    assert set(region_states(runtime).values()) == {RegionState.RELEASED}
    assert not admits(runtime)


async def test_resume_of_every_tag_serves_again_with_weights_byte_exact(runtime: NodeRuntime):
    weights = runtime.engine.model.weights.flat.clone()
    await runtime.controller.release(ReleaseRequest())
    report = await runtime.controller.resume(ResumeRequest())
    assert sorted(report.resumed) == sorted(HELD)
    assert runtime.controller.state is NodeState.SERVING and runtime.controller.released_tags == []
    assert set(region_states(runtime).values()) == {RegionState.RESIDENT}
    assert admits(runtime)
    assert torch.equal(runtime.engine.model.weights.flat, weights)


async def test_a_second_release_is_reported_and_changes_nothing(runtime: NodeRuntime):
    await runtime.controller.release(ReleaseRequest())
    again = await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.WEIGHTS]))
    assert again.released == [] and again.already_released == [MemoryTag.WEIGHTS]
    assert again.freed_bytes == 0 and again.drained_requests == 0
    assert runtime.controller.state is NodeState.SLEEPING
    assert runtime.controller.released_tags == HELD


async def test_a_resume_of_resident_tags_is_reported_and_changes_nothing(runtime: NodeRuntime):
    report = await runtime.controller.resume(ResumeRequest(tags=HELD))
    assert report.resumed == [] and report.already_resumed == HELD
    assert report.restored_bytes == 0
    assert runtime.controller.state is NodeState.SERVING and admits(runtime)


async def test_a_partial_resume_stays_asleep_with_admission_closed(runtime: NodeRuntime):
    await runtime.controller.release(ReleaseRequest())
    report = await runtime.controller.resume(ResumeRequest(tags=[MemoryTag.WEIGHTS]))
    assert report.resumed == [MemoryTag.WEIGHTS]
    assert runtime.controller.state is NodeState.SLEEPING
    assert runtime.controller.released_tags == [MemoryTag.KV_CACHE]
    assert not admits(runtime)
    await runtime.controller.resume(ResumeRequest())
    assert runtime.controller.state is NodeState.SERVING and admits(runtime)


async def test_a_sleeping_node_can_release_more_tags(runtime: NodeRuntime):
    await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.KV_CACHE]))
    assert runtime.controller.state is NodeState.SLEEPING
    report = await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.WEIGHTS]))
    assert report.released == [MemoryTag.WEIGHTS]
    assert runtime.controller.released_tags == HELD and not admits(runtime)


async def test_a_release_of_tags_without_memory_leaves_the_node_serving(runtime: NodeRuntime):
    report = await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.CUDA_GRAPH]))
    assert report.noop_tags == [MemoryTag.CUDA_GRAPH] and report.released == []
    assert runtime.controller.state is NodeState.SERVING and admits(runtime)


async def test_every_operation_is_refused_while_a_release_drains(runtime: NodeRuntime):
    work = runtime.admission.register("a request in flight")
    draining = asyncio.Event()
    work.on_abort(lambda _: draining.set())  # aborted by the drain: the release is waiting
    release = asyncio.create_task(runtime.controller.release(ReleaseRequest(drain="abort")))
    await draining.wait()
    assert runtime.controller.state is NodeState.DRAINING and not admits(runtime)
    for operation in (runtime.controller.release(ReleaseRequest()),
                      runtime.controller.resume(ResumeRequest()),
                      runtime.controller.flush_cache()):
        with pytest.raises(OperationConflict):
            await operation
    work.finish()
    report = await release
    assert report.drained_requests == 1 and runtime.controller.state is NodeState.SLEEPING


async def test_a_drain_that_times_out_releases_nothing_and_reopens_admission(
    runtime: NodeRuntime,
):
    work = runtime.admission.register("a request in flight")
    with pytest.raises(OperationConflict) as refused:
        await runtime.controller.release(ReleaseRequest(drain_timeout_s=0))
    assert refused.value.detail["inflight"] == ["a request in flight"]
    assert runtime.controller.state is NodeState.SERVING and admits(runtime)
    assert runtime.controller.released_tags == []
    assert set(region_states(runtime).values()) == {RegionState.RESIDENT}
    work.finish()


async def test_a_resume_without_room_leaves_the_node_asleep(make_runtime: MakeRuntime):
    runtime = make_runtime(enable_fault_injection=True, faults=["kind=oom_on_resume,times=1"])
    await runtime.controller.release(ReleaseRequest())
    with pytest.raises(InsufficientMemory):
        await runtime.controller.resume(ResumeRequest())
    assert runtime.controller.state is NodeState.SLEEPING and not admits(runtime)
    assert runtime.controller.released_tags == HELD
    await runtime.controller.resume(ResumeRequest())
    assert runtime.controller.state is NodeState.SERVING and admits(runtime)


async def test_flush_is_refused_with_requests_in_flight(runtime: NodeRuntime):
    work = runtime.admission.register("a request in flight")
    with pytest.raises(OperationConflict):
        await runtime.controller.flush_cache()
    work.finish()
    assert (await runtime.controller.flush_cache()).message == "cache flushed"


async def test_flush_of_a_released_kv_cache_does_nothing(runtime: NodeRuntime):
    await runtime.controller.release(ReleaseRequest(tags=[MemoryTag.KV_CACHE]))
    assert (await runtime.controller.flush_cache()).message.startswith("nothing to flush")
    assert runtime.controller.state is NodeState.SLEEPING


async def test_the_none_backend_refuses_release_and_resume(make_runtime: MakeRuntime):
    runtime = make_runtime(memory_backend="none")
    for operation in (runtime.controller.release(ReleaseRequest()),
                      runtime.controller.resume(ResumeRequest())):
        with pytest.raises(BackendDisabled):
            await operation
    assert runtime.controller.state is NodeState.SERVING and admits(runtime)
