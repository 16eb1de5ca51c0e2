"""Admission's pause: new requests wait while paused, an in-place pause freezes running work
between steps, and what a drain counts as in flight."""

from __future__ import annotations

import asyncio

import pytest

from node.admission import Admission, PauseMode
from node.refit.pause import continue_generation, pause_generation

pytestmark = pytest.mark.timeout(10)


async def test_a_request_arriving_while_paused_waits_until_continue() -> None:
    admission = Admission()
    admission.pause(PauseMode.ABORT)
    held = asyncio.create_task(admission.wait_running())
    await asyncio.sleep(0)  # one turn of the loop: the request reaches the gate
    assert admission.waiting == 1 and not held.done()
    assert continue_generation(admission).resumed_frozen == 0
    await held
    assert admission.waiting == 0


async def test_in_place_freezes_work_between_steps_and_a_drain_may_pass_it() -> None:
    admission = Admission()
    work = admission.register("request")
    report = await pause_generation(admission, PauseMode.IN_PLACE, drain_timeout_s=1)
    assert report.frozen == 1
    step = asyncio.create_task(work.between_steps())
    await asyncio.sleep(0)
    assert work.frozen and admission.frozen == 1
    assert await admission.wait_idle(0, frozen_block=False)
    assert not await admission.wait_idle(0)
    assert continue_generation(admission).resumed_frozen == 1
    await step
    assert not work.frozen
    work.finish()
    assert await admission.wait_idle(0)


async def test_an_abort_wakes_a_frozen_request() -> None:
    admission = Admission()
    work = admission.register("request")
    admission.pause(PauseMode.IN_PLACE)
    step = asyncio.create_task(work.between_steps())
    await asyncio.sleep(0)
    assert work.frozen
    admission.abort_all("released")
    await step
    assert work.abort_reason == "released" and not work.frozen


async def test_pause_abort_ends_running_work_and_a_second_pause_changes_nothing() -> None:
    admission = Admission()
    work = admission.register("request")
    report = await pause_generation(admission, PauseMode.ABORT, drain_timeout_s=1)
    assert report.aborted == 1 and work.abort_reason is not None
    again = await pause_generation(admission, PauseMode.IN_PLACE, drain_timeout_s=1)
    assert again.already_paused and again.mode is PauseMode.ABORT
    assert continue_generation(admission).paused is False
    assert continue_generation(admission).already_running
