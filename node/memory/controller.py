"""`MemoryController`: the node's memory state machine.

States and the allowed transitions live in `TRANSITIONS`; nothing else changes the state.

    SERVING --release--> DRAINING --drained--> RELEASING --> SLEEPING
       ^                    |  (drain timed out: 409)          |   ^ |
       +--------------------+                                  |   | | release more tags
       +------------------- RESUMING <--resume-----------------+   +-+
                      (all tags back)   (some still released: SLEEPING)

Rules the controller enforces, because the backends (torch_memory_saver in particular, which
exits the process) must never see them broken:
- one operation at a time: a second one while DRAINING, RELEASING or RESUMING gets 409;
- a region is released only while resident and resumed only while released; repeats are
  reported (`already_released` / `already_resumed`) and do nothing;
- generation is admitted only in SERVING: release closes admission before draining, and it
  reopens only when every released tag is back;
- resume first checks that the device has room for the regions it brings back (507 if not).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from node.admission import Admission
from node.engine.engine import Engine
from node.errors import BackendDisabled, InsufficientMemory, NodeError, OperationConflict
from node.memory.backends.base import MemoryBackend
from node.memory.messages import (
    FlushReport,
    MemoryInfo,
    ReleaseReport,
    ReleaseRequest,
    ResumeReport,
    ResumeRequest,
)
from node.memory.tags import ALL_TAGS, RELEASE_ORDER, RESUME_ORDER, MemoryTag, in_order
from pdfleet.vocabulary import Operation


class NodeState(Enum):
    SERVING = "serving"
    DRAINING = "draining"
    RELEASING = "releasing"
    SLEEPING = "sleeping"
    RESUMING = "resuming"


TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.SERVING: frozenset({NodeState.DRAINING}),
    NodeState.DRAINING: frozenset({NodeState.RELEASING, NodeState.SERVING}),
    NodeState.RELEASING: frozenset({NodeState.SLEEPING, NodeState.SERVING}),
    NodeState.SLEEPING: frozenset({NodeState.RELEASING, NodeState.RESUMING}),
    NodeState.RESUMING: frozenset({NodeState.SLEEPING, NodeState.SERVING}),
}
BUSY_STATES = frozenset({NodeState.DRAINING, NodeState.RELEASING, NodeState.RESUMING})


class MemoryController:
    def __init__(
        self,
        backend: MemoryBackend,
        engine: Engine,
        admission: Admission,
        drain_timeout_s: float,
        on_kv_cache_cleared: Callable[[], None],
        oom_injected: Callable[[], bool] = lambda: False,
        on_step: Callable[[Operation, MemoryTag, float], None] | None = None,
    ) -> None:
        self._backend = backend
        self._engine = engine
        self._admission = admission
        self._drain_timeout_s = drain_timeout_s
        self._on_kv_cache_cleared = on_kv_cache_cleared
        # Fault injection (oom_on_resume): the next resume finds the device full.
        self._oom_injected = oom_injected
        self._on_step = on_step
        self._state = NodeState.SERVING
        self._released: set[MemoryTag] = set()

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def released_tags(self) -> list[MemoryTag]:
        return [tag for tag in ALL_TAGS if tag in self._released]

    @property
    def backend(self) -> MemoryBackend:
        return self._backend

    async def release(self, request: ReleaseRequest) -> ReleaseReport:
        started = time.perf_counter()
        self._require_enabled()
        self._require_idle(Operation.RELEASE)
        tags = request.tags or list(ALL_TAGS)
        noop = [t for t in tags if not self._backend.holds_memory(t)]
        already = [t for t in tags if t in self._released]
        todo = [t for t in tags if t not in noop and t not in already]
        drained = 0
        freed = 0
        if todo:
            if self._state is NodeState.SERVING:
                drained = await self._drain(request)
            self._transition(NodeState.RELEASING)
            before = self._backend.stats().reading.used_bytes
            try:
                for tag in in_order(todo, RELEASE_ORDER):
                    await self._apply(self._backend.release, tag, Operation.RELEASE)
                    self._released.add(tag)
            finally:
                self._settle(NodeState.RELEASING)
            freed = before - self._backend.stats().reading.used_bytes
        return ReleaseReport(
            released=todo,
            already_released=already,
            noop_tags=noop,
            released_tags=self.released_tags,
            released_bytes=self._region_bytes(todo),
            freed_bytes=freed,
            drained_requests=drained,
            elapsed_ms=_elapsed_ms(started),
            memory=MemoryInfo.of(self._backend.stats()),
        )

    async def resume(self, request: ResumeRequest) -> ResumeReport:
        started = time.perf_counter()
        self._require_enabled()
        self._require_idle(Operation.RESUME)
        tags = request.tags if request.tags is not None else self.released_tags
        noop = [t for t in tags if not self._backend.holds_memory(t)]
        todo = [t for t in tags if t in self._released]
        already = [t for t in tags if t not in noop and t not in todo]
        restored = 0
        if todo:
            self._check_room(todo)
            self._transition(NodeState.RESUMING)
            before = self._backend.stats().reading.used_bytes
            try:
                for tag in in_order(todo, RESUME_ORDER):
                    await self._apply(self._backend.resume, tag, Operation.RESUME)
                    self._released.discard(tag)
                    if tag is MemoryTag.KV_CACHE:
                        self._on_kv_cache_cleared()
            finally:
                self._settle(NodeState.RESUMING)
            restored = self._backend.stats().reading.used_bytes - before
        return ResumeReport(
            resumed=todo,
            already_resumed=already,
            noop_tags=noop,
            released_tags=self.released_tags,
            resumed_bytes=self._region_bytes(todo),
            restored_bytes=restored,
            elapsed_ms=_elapsed_ms(started),
            memory=MemoryInfo.of(self._backend.stats()),
        )

    async def flush_cache(self) -> FlushReport:
        """Empty the KV pool; SGLang likewise refuses while requests are in flight."""
        started = time.perf_counter()
        self._require_idle(Operation.FLUSH)
        if MemoryTag.KV_CACHE in self._released:
            message = "nothing to flush: kv_cache is released"
        elif self._admission.inflight:
            raise OperationConflict(
                f"cache not flushed: {len(self._admission.inflight)} requests in flight",
                inflight=len(self._admission.inflight),
            )
        else:
            self._on_kv_cache_cleared()
            message = "cache flushed"
        return FlushReport(message=message, elapsed_ms=_elapsed_ms(started),
                           memory=MemoryInfo.of(self._backend.stats()))

    async def _drain(self, request: ReleaseRequest) -> int:
        """Close admission and empty the in-flight set; 409 (admission reopened) on timeout."""
        self._transition(NodeState.DRAINING)
        self._admission.close("node is draining for a memory release")
        timeout_s = (
            self._drain_timeout_s if request.drain_timeout_s is None else request.drain_timeout_s
        )
        inflight = len(self._admission.inflight)
        if request.drain == "abort":
            self._admission.abort_all("aborted: the node is releasing memory (drain=abort)")
        if not await self._admission.wait_idle(timeout_s):
            still = self._admission.inflight
            self._transition(NodeState.SERVING)
            self._admission.open()
            raise OperationConflict(
                f"drain timed out after {timeout_s:g}s with {len(still)} requests still in flight; "
                "nothing was released and generation is open again",
                inflight=still,
                drain=request.drain,
            )
        return inflight

    async def _apply(
        self, step: Callable[[MemoryTag], None], tag: MemoryTag, operation: Operation
    ) -> None:
        started = time.perf_counter()
        try:
            await self._engine.exclusive(step, tag)
        except Exception as error:
            raise NodeError(
                f"{operation.short} of {tag.value} failed: {type(error).__name__}: {error}"
            ) from error
        if self._on_step is not None:
            self._on_step(operation, tag, time.perf_counter() - started)

    def _region_bytes(self, tags: list[MemoryTag]) -> int:
        return sum(self._backend.region_bytes(tag) for tag in tags)

    def _check_room(self, tags: list[MemoryTag]) -> None:
        needed = self._region_bytes(tags)
        margin = self._backend.resume_margin_bytes
        free = self._backend.stats().reading.free_bytes
        if self._oom_injected():
            free = 0
        if needed + margin > free:
            raise InsufficientMemory(
                f"not enough free memory to resume {[t.value for t in tags]}: needs {needed} bytes "
                f"(+{margin} margin), {free} free; the node stays asleep",
                needed_bytes=needed,
                margin_bytes=margin,
                free_bytes=free,
            )

    def _settle(self, from_state: NodeState) -> None:
        """Leave RELEASING/RESUMING for SLEEPING or SERVING, whatever the backend did."""
        assert self._state is from_state
        if self._released:
            self._transition(NodeState.SLEEPING)
            names = ", ".join(t.value for t in self.released_tags)
            self._admission.close(f"node is sleeping (released: {names})")
        else:
            self._transition(NodeState.SERVING)
            self._admission.open()

    def _require_enabled(self) -> None:
        if not self._backend.enabled:
            raise BackendDisabled(
                "memory saver backend is disabled on this node (--memory-backend none): "
                "memory cannot be released or resumed"
            )

    def _require_idle(self, operation: Operation) -> None:
        if self._state in BUSY_STATES:
            raise OperationConflict(
                f"{operation} refused: another memory operation is running ({self._state.value})",
                state=self._state.value,
            )

    def _transition(self, target: NodeState) -> None:
        if target not in TRANSITIONS[self._state]:
            raise NodeError(
                f"invalid memory state transition {self._state.value} -> {target.value}"
            )
        self._state = target


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
