"""The one way pdfleet retries an operation: the same attempt again after a failure it names,
a bounded number of times, never waiting past a deadline.

The first attempt is a plain `await`: the clock is read and a wait is scheduled only once it
has failed, because the router's generation path goes through here on every request. Only
the exception types in `RetryPolicy.on` are retried; anything else (cancellation included)
ends the call at once. When the policy gives up, the last failure is raised as it was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`on`: the failures worth another attempt. `attempts`: how many in all, the first
    included (None: until the deadline, or until the caller is cancelled). `waits`: the
    seconds before the 2nd, 3rd, … attempt; the last one repeats, none means no wait."""

    on: tuple[type[Exception], ...]
    attempts: int | None = None
    waits: tuple[float, ...] = ()

    def wait_before(self, attempt: int) -> float:
        """The wait before attempt number `attempt` (2 for the first retry)."""
        if not self.waits:
            return 0.0
        return self.waits[min(attempt - 2, len(self.waits) - 1)]


async def retry(attempt: Callable[[], Awaitable[T]], policy: RetryPolicy,
                deadline: float | None = None) -> T:
    """`attempt()`'s result, calling it again after each failure `policy` retries. With a
    `deadline` (event-loop time), a retry whose wait would reach it is not made: the last
    failure is raised instead."""
    made = 1
    while True:
        try:
            return await attempt()
        except policy.on:
            if policy.attempts is not None and made >= policy.attempts:
                raise
            wait = policy.wait_before(made + 1)
            if deadline is not None and asyncio.get_running_loop().time() + wait >= deadline:
                raise
        if wait:
            await asyncio.sleep(wait)
        made += 1
