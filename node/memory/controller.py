"""`MemoryController`: the node's memory and weights state machine.

States and the allowed transitions live in `TRANSITIONS`; nothing else changes the state.

    SERVING --release--> DRAINING --drained--> RELEASING --> SLEEPING
       ^                    |  (drain timed out: 409)          |   ^ |
       +--------------------+                                  |   | | release more tags
       +------------------- RESUMING <--resume-----------------+   +-+
                      (all tags back)   (some still released: SLEEPING)

    SERVING --update--> DRAINING --drained--> UPDATING --copied--> SERVING (or SLEEPING when
    SLEEPING --update (weights resident)--------^   |               kv_cache is released)
                                                    +--failed part-way--> INCOMPLETE
    INCOMPLETE --update--> UPDATING (the only way out: the weights are half old, half new)

Rules the controller enforces, because the backends (torch_memory_saver in particular, which
exits the process) must never see them broken:
- one operation at a time (release, resume, flush or a weight update): a second one while
  DRAINING, RELEASING, RESUMING or UPDATING gets 409;
- a region is released only while resident and resumed only while released; repeats are
  reported (`already_released` / `already_resumed`) and do nothing;
- generation is admitted only in SERVING: release closes admission before draining, and it
  reopens only when every released tag is back;
- resume first checks that the device has room for the regions it brings back (507 if not);
- new weights are checked against the model before the weights region is touched (400), and
  never copied while `weights` is released (409: there is no resident region to copy into);
- a copy that fails part-way leaves the node INCOMPLETE: it refuses generation and reports
  no weight version until an update succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
from node.refit.messages import WeightUpdate, WeightUpdateReport
from node.refit.source import WeightsSource
from pdfleet.vocabulary import Operation


class NodeState(Enum):
    SERVING = "serving"
    DRAINING = "draining"
    RELEASING = "releasing"
    SLEEPING = "sleeping"
    RESUMING = "resuming"
    UPDATING = "updating"
    INCOMPLETE = "incomplete"


TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.SERVING: frozenset({NodeState.DRAINING}),
    NodeState.DRAINING: frozenset({NodeState.RELEASING, NodeState.UPDATING, NodeState.SERVING}),
    NodeState.RELEASING: frozenset({NodeState.SLEEPING, NodeState.SERVING}),
    NodeState.SLEEPING: frozenset({NodeState.RELEASING, NodeState.RESUMING, NodeState.UPDATING}),
    NodeState.RESUMING: frozenset({NodeState.SLEEPING, NodeState.SERVING}),
    NodeState.UPDATING: frozenset(
        {NodeState.SERVING, NodeState.SLEEPING, NodeState.INCOMPLETE}),
    NodeState.INCOMPLETE: frozenset({NodeState.UPDATING}),
}
BUSY_STATES = frozenset(
    {NodeState.DRAINING, NodeState.RELEASING, NodeState.RESUMING, NodeState.UPDATING})
INCOMPLETE_MESSAGE = "weights incomplete after a failed update; update again"


@dataclass(frozen=True)
class Drain:
    """How an operation empties the in-flight set before it touches memory."""

    abort: bool
    timeout_s: float
    closed: str  # the 503's message while it drains
    aborted: str  # what an aborted request's client reads
    unchanged: str  # what a timed-out drain left alone: "nothing was released"
    # A sleeping node's 503 tells a router to place requests elsewhere until a wake; a node
    # that updates its weights serves again on its own in moments.
    sleeping: bool
    # Requests frozen by an in-place pause go on with the new weights after an update, but
    # would lose their KV to a release.
    frozen_block: bool


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
        weight_version: str = "default",
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
        self._weight_version = weight_version

    @property
    def state(self) -> NodeState:
        return self._state

    @property
    def weight_version(self) -> str | None:
        """The version of the weights served; None while they are incomplete."""
        return None if self._state is NodeState.INCOMPLETE else self._weight_version

    def set_weight_version(self, version: str, *, abort_all_requests: bool = False) -> int:
        """Rename the weights served (no copy); how many requests were aborted."""
        aborted = 0
        if abort_all_requests:
            aborted = self._admission.abort_all(
                "aborted: the node's weight version changed (abort_all_requests)")
        self._weight_version = version
        return aborted

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
        self._require_complete(Operation.RELEASE)
        tags = request.tags or list(ALL_TAGS)
        noop = [t for t in tags if not self._backend.holds_memory(t)]
        already = [t for t in tags if t in self._released]
        todo = [t for t in tags if t not in noop and t not in already]
        drained = 0
        freed = 0
        if todo:
            if self._state is NodeState.SERVING:
                drained = await self._drain(self._release_drain(request))
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
        self._require_complete(Operation.RESUME)
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

    async def update_weights(
        self, operation: Operation, update: WeightUpdate, source: WeightsSource
    ) -> WeightUpdateReport:
        """Copy `source`'s weights into the weights region in place, once in-flight requests
        have finished (or were aborted); `source` is checked against the model first."""
        started = time.perf_counter()
        self._require_idle(operation)
        if MemoryTag.WEIGHTS in self._released:
            raise OperationConflict(
                f"{operation} refused: weights are released; resume weights first",
                state=self._state.value,
            )
        source.check()
        drained = 0
        if self._state is NodeState.SERVING:
            drained = await self._drain(Drain(
                abort=update.abort_all_requests,
                timeout_s=(self._drain_timeout_s if update.drain_timeout_s is None
                           else update.drain_timeout_s),
                closed="node is updating weights",
                aborted="aborted: the node is updating its weights (abort_all_requests)",
                unchanged="the weights were not changed",
                sleeping=False,
                frozen_block=False,
            ))
        self._transition(NodeState.UPDATING)
        copy_started = time.perf_counter()
        try:
            copied = await self._engine.exclusive(source.copy)
        except Exception as error:
            self._transition(NodeState.INCOMPLETE)
            self._admission.close(INCOMPLETE_MESSAGE, sleeping=False)
            self._admission.abort_all(f"aborted: {INCOMPLETE_MESSAGE}")
            raise NodeError(
                f"{operation} failed part-way ({type(error).__name__}: {error}); "
                f"{INCOMPLETE_MESSAGE}"
            ) from error
        copy_s = time.perf_counter() - copy_started
        flushed = update.flush_cache and MemoryTag.KV_CACHE not in self._released
        if flushed:
            self._on_kv_cache_cleared()
        if update.weight_version is not None:
            self._weight_version = update.weight_version
        self._settle(NodeState.UPDATING)
        return WeightUpdateReport(
            message=f"weights updated from {source.description}",
            weight_version=self._weight_version,
            bytes=copied,
            elapsed_ms=_elapsed_ms(started),
            copy_ms=round(copy_s * 1000, 3),
            copy_gbps=round(copied / copy_s / 1e9, 3) if copy_s > 0 else 0.0,
            drained_requests=drained,
            frozen_requests=self._admission.frozen,
            flushed_cache=flushed,
        )

    def _release_drain(self, request: ReleaseRequest) -> Drain:
        return Drain(
            abort=request.drain == "abort",
            timeout_s=(self._drain_timeout_s if request.drain_timeout_s is None
                       else request.drain_timeout_s),
            closed="node is draining for a memory release",
            aborted="aborted: the node is releasing memory (drain=abort)",
            unchanged="nothing was released",
            sleeping=True,
            frozen_block=True,
        )

    async def _drain(self, drain: Drain) -> int:
        """Close admission and empty the in-flight set; 409 (admission reopened) on timeout."""
        self._transition(NodeState.DRAINING)
        self._admission.close(drain.closed, sleeping=drain.sleeping)
        inflight = len(self._admission.inflight)
        if not drain.frozen_block:
            inflight -= self._admission.frozen
        if drain.abort:
            self._admission.abort_all(drain.aborted)
        if not await self._admission.wait_idle(drain.timeout_s, frozen_block=drain.frozen_block):
            still = self._admission.inflight
            self._transition(NodeState.SERVING)
            self._admission.open()
            raise OperationConflict(
                f"drain timed out after {drain.timeout_s:g}s with {len(still)} requests still "
                f"in flight; {drain.unchanged} and generation is open again",
                inflight=still,
                drain="abort" if drain.abort else "wait",
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
        """Leave RELEASING/RESUMING/UPDATING for SLEEPING or SERVING, whatever the backend
        did."""
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

    def _require_complete(self, operation: Operation) -> None:
        if self._state is NodeState.INCOMPLETE:
            raise OperationConflict(
                f"{operation} refused: {INCOMPLETE_MESSAGE}", state=self._state.value)

    def _transition(self, target: NodeState) -> None:
        if target not in TRANSITIONS[self._state]:
            raise NodeError(
                f"invalid memory state transition {self._state.value} -> {target.value}"
            )
        self._state = target


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
