"""Release drains in-flight work first: wait, wait past the timeout, abort.

A decode request whose KV has not arrived yet stays in flight for as long as the test wants:
the test decides when the prefill node fills the room. That makes "a request is in flight
while memory is released" deterministic, without timing guesses.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import pytest

from tests.node.conftest import NodeProcess, StartNode, greedy, sse_events, wait_for_info

pytestmark = pytest.mark.timeout(60)

_rooms = itertools.count(5000)


@pytest.fixture
async def awake_pair(http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess) -> Any:
    for node in (prefill, decode):
        assert node.info()["state"] == "serving"
    yield prefill, decode
    for node in (prefill, decode):
        await post(http, f"{node.url}/resume_memory_occupation", {})
        info = await wait_for_info(http, node, lambda info: info["inflight"] == 0)
        assert info["state"] == "serving"


def pd_body(prefill: NodeProcess) -> dict[str, Any]:
    return {
        "text": "in flight",
        "sampling_params": {"max_new_tokens": 8, "temperature": 0},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": prefill.bootstrap_port,
        "bootstrap_room": next(_rooms),
    }


async def post(http: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.post(url, json=body) as reply:
        return reply.status, await reply.json()


async def start_waiting_decode(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, count: int = 1
) -> tuple[dict[str, Any], asyncio.Task[tuple[int, Any]]]:
    """A decode request that stays in flight until its room is prefilled."""
    body = pd_body(prefill)
    task = asyncio.create_task(post(http, f"{decode.url}/generate", body))
    await wait_for_info(http, decode, lambda info: info["inflight"] == count)
    return body, task


async def test_drain_wait_lets_the_inflight_request_finish(
    http: aiohttp.ClientSession, awake_pair: tuple[NodeProcess, NodeProcess]
) -> None:
    prefill, decode = awake_pair
    body, waiting = await start_waiting_decode(http, prefill, decode)
    release = asyncio.create_task(
        post(
            http,
            f"{decode.url}/release_memory_occupation",
            {"drain": "wait", "drain_timeout_s": 30},
        )
    )
    await wait_for_info(http, decode, lambda info: info["state"] == "draining")
    async with http.post(f"{decode.url}/generate", json=pd_body(prefill)) as refused:
        assert refused.status == 503
        assert "Retry-After" in refused.headers
    assert not release.done()

    assert (await post(http, f"{prefill.url}/generate", body))[0] == 200
    status, reply = await waiting
    assert status == 200 and len(reply["output_ids"]) == 8
    status, released = await release
    assert status == 200, released
    assert released["released_tags"] == ["weights", "kv_cache"]
    assert released["drained_requests"] == 1


async def test_overlapping_memory_operations_are_409(
    http: aiohttp.ClientSession, awake_pair: tuple[NodeProcess, NodeProcess]
) -> None:
    prefill, decode = awake_pair
    body, waiting = await start_waiting_decode(http, prefill, decode)
    release = asyncio.create_task(
        post(http, f"{decode.url}/release_memory_occupation", {"drain_timeout_s": 30})
    )
    await wait_for_info(http, decode, lambda info: info["state"] == "draining")
    for path in [
        "/release_memory_occupation",
        "/resume_memory_occupation",
        "/flush_cache",
        "/sleep",
        "/wake_up",
    ]:
        status, reply = await post(http, f"{decode.url}{path}", {})
        assert status == 409, path
        assert "another memory operation" in reply["message"]
    await post(http, f"{prefill.url}/generate", body)
    assert (await waiting)[0] == 200
    assert (await release)[0] == 200


async def test_drain_timeout_is_409_and_reopens_admission(
    http: aiohttp.ClientSession, awake_pair: tuple[NodeProcess, NodeProcess]
) -> None:
    prefill, decode = awake_pair
    body, waiting = await start_waiting_decode(http, prefill, decode)
    status, reply = await post(
        http, f"{decode.url}/release_memory_occupation", {"drain": "wait", "drain_timeout_s": 0.3}
    )
    assert status == 409
    assert "drain timed out" in reply["message"]
    assert len(reply["inflight"]) == 1
    info = decode.info()
    assert (
        info["state"] == "serving" and info["admission"] == "open" and info["released_tags"] == []
    )
    assert (await post(http, f"{prefill.url}/generate", body))[0] == 200
    status, reply = await waiting
    assert status == 200 and len(reply["output_ids"]) == 8


async def test_drain_abort_ends_waiting_requests_with_a_clear_error(
    http: aiohttp.ClientSession, awake_pair: tuple[NodeProcess, NodeProcess]
) -> None:
    prefill, decode = awake_pair
    _, plain = await start_waiting_decode(http, prefill, decode)

    async def stream() -> list[Any]:
        async with http.post(
            f"{decode.url}/generate", json={**pd_body(prefill), "stream": True}
        ) as reply:
            assert reply.status == 200
            return await sse_events(reply)

    streaming = asyncio.create_task(stream())
    await wait_for_info(http, decode, lambda info: info["inflight"] == 2)
    status, released = await post(
        http, f"{decode.url}/release_memory_occupation", {"drain": "abort"}
    )
    assert status == 200, released
    assert released["drained_requests"] == 2
    status, reply = await plain
    assert status == 503
    assert "aborted" in reply["message"]
    events = await streaming
    assert events[-1] == "[DONE]"
    assert "aborted" in events[-2]["error"]["message"]


async def test_drain_abort_stops_a_running_generation(
    http: aiohttp.ClientSession, start_node: StartNode
) -> None:
    node = start_node()
    body = greedy("a long answer", 1000, stream=True)
    async with http.post(f"{node.url}/generate", json=body) as reply:
        assert reply.status == 200
        first = await reply.content.readuntil(b"\n\n")
        assert b"output_ids" in first
        status, released = await post(
            http, f"{node.url}/release_memory_occupation", {"drain": "abort"}
        )
        events = await sse_events(reply)
    assert status == 200 and released["drained_requests"] == 1
    assert events[-1] == "[DONE]"
    assert "aborted" in events[-2]["error"]["message"]
    assert all("output_ids" in e for e in events[:-2])
    assert len(events) < 1000
    assert (await post(http, f"{node.url}/resume_memory_occupation"))[0] == 200


async def test_held_kv_handoff_counts_as_inflight(
    http: aiohttp.ClientSession, awake_pair: tuple[NodeProcess, NodeProcess]
) -> None:
    prefill, _ = awake_pair
    body = pd_body(prefill)
    assert (await post(http, f"{prefill.url}/generate", body))[0] == 200
    status, reply = await post(
        http, f"{prefill.url}/release_memory_occupation", {"drain_timeout_s": 0.2}
    )
    assert status == 409
    assert "kv hand-off" in reply["inflight"][0]
    status, released = await post(
        http, f"{prefill.url}/release_memory_occupation", {"drain": "abort"}
    )
    assert status == 200 and released["drained_requests"] == 1
    async with http.get(
        f"http://127.0.0.1:{prefill.bootstrap_port}/kv/{body['bootstrap_room']}"
    ) as pulled:
        assert pulled.status == 410
        assert "dropped" in (await pulled.json())["message"]
