"""Admission and in-flight work: what a memory release or a weight update closes, drains and
may abort, and what a pause holds.

Every generation request (and every KV hand-off a prefill node still owes) is an
`InflightWork` while it runs. A release or an update closes admission, then either waits for
the in-flight set to empty or aborts each member; an aborted request ends at its next step
with the reason.

Pausing generation (`pause`) is not a closed door: new requests wait for `continue_generation`
instead of being refused, as SGLang holds them. In `in_place` mode the running requests stop
between two steps (frozen) and go on after continue; a frozen request does not hold up a
weight update (it goes on with the new weights), so a drain can wait for the requests that
still run while leaving the frozen ones alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum

from node.errors import NotAdmitted


class PauseMode(StrEnum):
    """How `pause_generation` treats the requests already running."""

    ABORT = "abort"  # end them now with an error
    IN_PLACE = "in_place"  # freeze them between steps until continue
    WAIT = "wait"  # let them finish; the pause is done when they have
    RETRACT = "retract"  # SGLang's: re-run them from the prompt (not offered by this node)


class InflightWork:
    def __init__(self, label: str, admission: Admission) -> None:
        self.label = label
        self.abort_reason: str | None = None
        self.frozen = False
        self._aborted = asyncio.Event()
        self._admission = admission
        self._abort_hooks: list[Callable[[str], None]] = []
        self._finished = False

    def on_abort(self, hook: Callable[[str], None]) -> None:
        self._abort_hooks.append(hook)

    def abort(self, reason: str) -> None:
        if self.abort_reason is not None:
            return
        self.abort_reason = reason
        self._aborted.set()
        for hook in self._abort_hooks:
            hook(reason)

    async def wait_aborted(self) -> str:
        await self._aborted.wait()
        assert self.abort_reason is not None
        return self.abort_reason

    async def between_steps(self) -> None:
        """Where a running request may be frozen by an in-place pause: returns once generation
        continues, or at once when the request is aborted."""
        await self._admission.hold_frozen(self)

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._admission.forget(self)


class Admission:
    def __init__(self) -> None:
        self._closed_reason: str | None = None
        self._closed_sleeping = False
        self._inflight: dict[InflightWork, None] = {}
        self._paused: PauseMode | None = None
        self._running = asyncio.Event()
        self._running.set()
        self._waiting = 0
        self._changed = asyncio.Event()

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def inflight(self) -> list[str]:
        return [work.label for work in self._inflight]

    @property
    def frozen(self) -> int:
        return sum(work.frozen for work in self._inflight)

    @property
    def paused(self) -> PauseMode | None:
        return self._paused

    @property
    def waiting(self) -> int:
        """New requests held until generation continues."""
        return self._waiting

    def check(self) -> None:
        """Raise NotAdmitted while closed."""
        if self._closed_reason is not None:
            raise NotAdmitted(self._closed_reason, sleeping=self._closed_sleeping)

    async def wait_running(self) -> None:
        """Return once generation is not paused (at once when it is not)."""
        if self._running.is_set():
            return
        self._waiting += 1
        try:
            await self._running.wait()
        finally:
            self._waiting -= 1

    def register(self, label: str) -> InflightWork:
        """Track admitted work: a request, or a hand-off owed by one."""
        work = InflightWork(label, self)
        self._inflight[work] = None
        self._notify()
        return work

    def close(self, reason: str, *, sleeping: bool = True) -> None:
        """Refuse new work with 503 and `reason`; `sleeping` marks the refusal as a node that
        released memory, which a router reads as "place it elsewhere until woken"."""
        self._closed_reason = reason
        self._closed_sleeping = sleeping

    def open(self) -> None:
        self._closed_reason = None

    async def wait_idle(self, timeout_s: float, *, frozen_block: bool = True) -> bool:
        """True once nothing is in flight (with `frozen_block` False: nothing but frozen
        requests); False if `timeout_s` passes first."""
        try:
            async with asyncio.timeout(timeout_s):
                while any(frozen_block or not work.frozen for work in self._inflight):
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def abort_all(self, reason: str) -> int:
        works = list(self._inflight)
        for work in works:
            work.abort(reason)
        return len(works)

    def pause(self, mode: PauseMode) -> None:
        self._paused = mode
        self._running.clear()
        self._notify()

    def unpause(self) -> int:
        """Let held and frozen requests go on; how many were frozen."""
        frozen = self.frozen
        self._paused = None
        self._running.set()
        self._notify()
        return frozen

    async def hold_frozen(self, work: InflightWork) -> None:
        if self._paused is not PauseMode.IN_PLACE or work.abort_reason is not None:
            return
        work.frozen = True
        self._notify()
        running = asyncio.ensure_future(self._running.wait())
        aborted = asyncio.ensure_future(work.wait_aborted())
        try:
            await asyncio.wait({running, aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            running.cancel()
            aborted.cancel()
            work.frozen = False
            self._notify()

    def forget(self, work: InflightWork) -> None:
        self._inflight.pop(work, None)
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter, then start a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
