"""Admission and in-flight work: what a memory release closes, drains and may abort.

Every generation request (and every KV hand-off a prefill node still owes) is an
`InflightWork` while it runs. A release closes admission, then either waits for the in-flight
set to empty or aborts each member; an aborted request ends at its next step with the reason.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from node.errors import NotAdmitted


class InflightWork:
    def __init__(self, label: str, on_finish: Callable[[InflightWork], None]) -> None:
        self.label = label
        self.abort_reason: str | None = None
        self._aborted = asyncio.Event()
        self._on_finish = on_finish
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

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self._on_finish(self)


class Admission:
    def __init__(self) -> None:
        self._closed_reason: str | None = None
        self._inflight: dict[int, InflightWork] = {}
        self._ids = itertools.count()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def closed_reason(self) -> str | None:
        return self._closed_reason

    @property
    def inflight(self) -> list[str]:
        return [work.label for work in self._inflight.values()]

    def check(self) -> None:
        """Raise NotAdmitted while closed."""
        if self._closed_reason is not None:
            raise NotAdmitted(self._closed_reason)

    def register(self, label: str) -> InflightWork:
        """Track admitted work: a request, or a hand-off owed by one."""
        key = next(self._ids)
        work = InflightWork(label, on_finish=lambda _: self._forget(key))
        self._inflight[key] = work
        self._idle.clear()
        return work

    def close(self, reason: str) -> None:
        self._closed_reason = reason

    def open(self) -> None:
        self._closed_reason = None

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is in flight; False if `timeout_s` passes first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def abort_all(self, reason: str) -> int:
        works = list(self._inflight.values())
        for work in works:
            work.abort(reason)
        return len(works)

    def _forget(self, key: int) -> None:
        self._inflight.pop(key, None)
        if not self._inflight:
            self._idle.set()
