"""pdfleet/retry.py: one retry helper for every retry in the router and the node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from pdfleet.retry import RetryPolicy, retry
from router.http.client import REFUSED_RETRY
from router.http.errors import ConnectionRefused, ConnectionReset


class Busy(Exception):
    pass


def failing(times: int, exc: Callable[[], BaseException] = Busy) -> tuple[
        Callable[[], Awaitable[str]], list[float]]:
    """An attempt that fails `times` times, then answers "done"; and when each call came."""
    calls: list[float] = []

    async def attempt() -> str:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= times:
            raise exc()
        return "done"

    return attempt, calls


async def test_a_first_success_is_returned_without_a_retry() -> None:
    attempt, calls = failing(0)
    assert await retry(attempt, RetryPolicy(on=(Busy,), attempts=3)) == "done"
    assert len(calls) == 1


async def test_a_named_failure_is_retried_until_an_attempt_succeeds() -> None:
    attempt, calls = failing(4)
    assert await retry(attempt, RetryPolicy(on=(Busy,))) == "done"
    assert len(calls) == 5


async def test_a_failure_the_policy_does_not_name_is_raised_at_once() -> None:
    attempt, calls = failing(1, ValueError)
    with pytest.raises(ValueError):
        await retry(attempt, RetryPolicy(on=(Busy,), attempts=3))
    assert len(calls) == 1


async def test_a_cancelled_attempt_is_never_retried() -> None:
    attempt, calls = failing(1, asyncio.CancelledError)
    with pytest.raises(asyncio.CancelledError):
        await retry(attempt, RetryPolicy(on=(Exception,), attempts=3))
    assert len(calls) == 1


async def test_the_last_failure_is_raised_after_the_last_attempt() -> None:
    attempt, calls = failing(5)
    with pytest.raises(Busy):
        await retry(attempt, RetryPolicy(on=(Busy,), attempts=3))
    assert len(calls) == 3


async def test_each_retry_waits_its_wait_first() -> None:
    attempt, calls = failing(2)
    await retry(attempt, RetryPolicy(on=(Busy,), attempts=3, waits=(0.05, 0.1)))
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1


def test_the_last_wait_repeats_and_no_waits_means_none() -> None:
    policy = RetryPolicy(on=(Busy,), waits=(0.25, 0.5))
    assert [policy.wait_before(n) for n in (2, 3, 4, 5)] == [0.25, 0.5, 0.5, 0.5]
    assert RetryPolicy(on=(Busy,)).wait_before(2) == 0.0


async def test_a_retry_whose_wait_would_reach_the_deadline_is_not_made() -> None:
    loop = asyncio.get_running_loop()
    attempt, calls = failing(5)
    started = loop.time()
    with pytest.raises(Busy):
        await retry(attempt, RetryPolicy(on=(Busy,), waits=(30.0,)), deadline=started + 10)
    assert len(calls) == 1 and loop.time() - started < 10


async def test_a_refused_node_is_tried_again_after_a_quarter_second_then_half_a_second() -> None:
    # README: 3 attempts within about 0.75 s of backoff, never past the deadline. With 0.6 s
    # left, the second attempt comes after 0.25 s and a third (0.5 s later) would be late.
    loop = asyncio.get_running_loop()
    attempt, calls = failing(5, ConnectionRefused)
    with pytest.raises(ConnectionRefused):
        await retry(attempt, REFUSED_RETRY, deadline=loop.time() + 0.6)
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.25
    attempt, calls = failing(5, ConnectionRefused)
    with pytest.raises(ConnectionRefused):
        await retry(attempt, REFUSED_RETRY, deadline=loop.time() + 60)
    assert len(calls) == 3 and calls[2] - calls[1] >= 0.5


async def test_only_a_refused_connection_is_retried_by_the_node_client() -> None:
    attempt, calls = failing(1, ConnectionReset)
    with pytest.raises(ConnectionReset):
        await retry(attempt, REFUSED_RETRY)
    assert len(calls) == 1
