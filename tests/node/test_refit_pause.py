"""pause_generation / continue_generation on real nodes, in every mode.

The running request is a decode request waiting for its KV (in flight until the test
prefills its room), so each mode meets a request in flight without timing guesses.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.node.conftest import (
    NodeProcess,
    greedy,
    post_json,
    wait_for_info,
)
from tests.node.test_drain import pd_body, start_waiting_decode

pytestmark = pytest.mark.timeout(90)


async def pause(http: aiohttp.ClientSession, node: NodeProcess, **body: Any) -> tuple[int, Any]:
    return await post_json(http, f"{node.url}/pause_generation", body)


async def continue_(http: aiohttp.ClientSession, node: NodeProcess) -> tuple[int, Any]:
    return await post_json(http, f"{node.url}/continue_generation")


@pytest.fixture(autouse=True)
async def running_again(
    http: aiohttp.ClientSession, decode: NodeProcess, mixed_node: NodeProcess
) -> AsyncIterator[None]:
    yield
    for node in (decode, mixed_node):
        await continue_(http, node)
        await wait_for_info(http, node, lambda info: info["inflight"] == 0)


async def reference_tokens(http: aiohttp.ClientSession, prefill: NodeProcess,
                           decode: NodeProcess) -> list[int]:
    body = pd_body(prefill)
    _, (status, reply) = await asyncio.gather(
        post_json(http, f"{prefill.url}/generate", body),
        post_json(http, f"{decode.url}/generate", body))
    assert status == 200, reply
    return reply["output_ids"]


async def test_pause_abort_ends_the_running_request_with_a_clear_error(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    _, waiting = await start_waiting_decode(http, prefill, decode)
    status, report = await pause(http, decode, mode="abort")
    assert status == 200, report
    assert report["paused"] and report["mode"] == "abort" and report["aborted"] == 1
    status, reply = await waiting
    assert status == 503 and "generation paused" in reply["message"]
    info = decode.info()
    assert info["paused"] and info["pause_mode"] == "abort"


async def test_pause_in_place_freezes_the_request_until_continue(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    wanted = await reference_tokens(http, prefill, decode)
    body, waiting = await start_waiting_decode(http, prefill, decode)
    status, report = await pause(http, decode, mode="in_place")
    assert status == 200 and report["frozen"] == 1, report
    assert (await post_json(http, f"{prefill.url}/generate", body))[0] == 200
    await wait_for_info(http, decode, lambda info: info["frozen_requests"] == 1)
    assert not waiting.done()
    status, report = await continue_(http, decode)
    assert status == 200 and report["resumed_frozen"] == 1 and not report["paused"]
    status, reply = await waiting
    assert status == 200 and reply["output_ids"] == wanted


async def test_pause_wait_returns_once_the_running_request_finished(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    body, waiting = await start_waiting_decode(http, prefill, decode)
    pausing = asyncio.create_task(pause(http, decode, mode="wait"))
    await wait_for_info(http, decode, lambda info: info["paused"])
    assert not pausing.done()
    assert (await post_json(http, f"{prefill.url}/generate", body))[0] == 200
    status, report = await pausing
    assert status == 200 and report["waited_for"] == 1, report
    assert decode.info()["inflight"] == 0
    assert (await waiting)[0] == 200


async def test_pause_wait_past_its_timeout_is_409_and_leaves_generation_running(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    body, waiting = await start_waiting_decode(http, prefill, decode)
    status, reply = await pause(http, decode, mode="wait", timeout_s=0.2)
    assert status == 409 and "was not paused" in reply["message"]
    assert not decode.info()["paused"]
    assert (await post_json(http, f"{prefill.url}/generate", body))[0] == 200
    assert (await waiting)[0] == 200


async def test_requests_arriving_while_paused_wait_and_complete_after_continue(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    wanted = (await post_json(http, f"{mixed_node.url}/generate", greedy("held", 8)))[1]
    assert (await pause(http, mixed_node))[0] == 200
    held = asyncio.create_task(post_json(http, f"{mixed_node.url}/generate", greedy("held", 8)))
    await wait_for_info(http, mixed_node, lambda info: info["waiting_requests"] == 1)
    assert not held.done()
    assert (await continue_(http, mixed_node))[0] == 200
    status, reply = await held
    assert status == 200 and reply["output_ids"] == wanted["output_ids"]


async def test_pause_while_paused_and_continue_while_running_are_reported_no_ops(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    status, report = await continue_(http, mixed_node)
    assert status == 200 and report["already_running"]
    assert (await pause(http, mixed_node, mode="in_place"))[0] == 200
    status, report = await pause(http, mixed_node, mode="abort")
    assert status == 200 and report["already_paused"] and report["mode"] == "in_place"


async def test_the_generation_probe_answers_503_while_paused(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    assert (await pause(http, mixed_node, mode="in_place"))[0] == 200
    async with http.get(f"{mixed_node.url}/health_generate") as probe:
        assert probe.status == 503 and "paused" in (await probe.json())["message"]
    assert (await continue_(http, mixed_node))[0] == 200
    async with http.get(f"{mixed_node.url}/health_generate") as probe:
        assert probe.status == 200


@pytest.mark.parametrize(("body", "named"), [
    ({"mode": "retract"}, "does not retract"),
    ({"mode": "sideways"}, "mode"),
])
async def test_a_pause_this_node_cannot_do_is_400_and_changes_nothing(
    http: aiohttp.ClientSession, mixed_node: NodeProcess, body: dict[str, Any], named: str
) -> None:
    status, reply = await pause(http, mixed_node, **body)
    assert status == 400 and named in reply["message"]
    assert not mixed_node.info()["paused"]
