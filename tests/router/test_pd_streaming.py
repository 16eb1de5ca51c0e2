"""Streamed generation through a real router — relayed as it arrives, never
buffered, and both node calls cancelled when the client leaves."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.procs import eventually
from tests.router.pd_support import calls, disconnected, no_outstanding, pd_fleet

pytestmark = pytest.mark.timeout(60)


async def release_last_chunk(http: aiohttp.ClientSession, stub_url: str) -> None:
    async with http.post(f"{stub_url}/_stub/release") as resp:
        assert resp.status == 200


async def next_event(resp: aiohttp.ClientResponse) -> str:
    """The next SSE `data:` payload (bounded wait)."""
    async with asyncio.timeout(10):
        while True:
            line = (await resp.content.readline()).decode()
            assert line, "stream ended"
            if line.startswith("data: "):
                return line[6:].strip()


def events(raw: bytes) -> list[str]:
    return [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
async def test_first_chunk_reaches_client_before_decode_sends_the_last(
        stub_nodes, router, http, path):
    stubs = stub_nodes([{}, {"stream_chunks": 4, "hold_last_chunk": True}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    body = {"text": "x", "prompt": "x", "messages": [{"role": "user", "content": "x"}],
            "stream": True}
    async with http.post(f"{r.url}{path}", json=body) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        first = json.loads(await next_event(resp))
        # The stub holds its last chunk until released: what arrived was relayed as it came.
        (decode_call,) = await calls(http, stubs.urls[1])
        assert decode_call["chunks_sent"] < 4 and "completed" not in decode_call
        assert "tok0" in json.dumps(first)
        await release_last_chunk(http, stubs.urls[1])
        rest = events(await resp.read())
    assert rest[-1] == "[DONE]" and len(rest) == 4
    assert "tok3" in rest[-2]
    (prefill_call,) = await calls(http, stubs.urls[0])
    assert prefill_call["json"]["bootstrap_room"] == decode_call["json"]["bootstrap_room"]
    await eventually(lambda: no_outstanding(http, r.url))


async def test_relay_does_not_wait_for_prefill_reply(stub_nodes, router, http):
    stubs = stub_nodes([{"mode": "hang"}, {"stream_chunks": 2}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as resp:
        assert resp.status == 200
        async with asyncio.timeout(10):
            assert events(await resp.read())[-1] == "[DONE]"
    # The prefill call outlived the stream and is still running, as it may in real PD.
    assert (await calls(http, stubs.urls[0]))[0].get("disconnected") is None


async def test_a_client_that_stops_reading_stops_the_node_stream_and_loses_nothing(
        stub_nodes, router, http):
    chunks = 1500  # of 64 KiB: 94 MiB, far more than every buffer on the way holds
    stubs = stub_nodes([{}, {"stream_chunks": chunks, "chunk_pad": 65536}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as resp:
        assert resp.status == 200
        # The client reads nothing: the router stops reading the node, so the stub's
        # writes block well before its last chunk.
        sent = [-1]
        async with asyncio.timeout(30):
            while len(sent) < 4 or len(set(sent[-4:])) > 1:
                await asyncio.sleep(0.25)
                (decode_call,) = await calls(http, stubs.urls[1])
                sent.append(decode_call["chunks_sent"])
        assert 0 < sent[-1] < chunks, sent
        received = events(await resp.read())
    assert len(received) == chunks + 1 and received[-1] == "[DONE]"
    assert [json.loads(e)["pad"] == "x" * 65536 for e in received[:-1]] == [True] * chunks
    await eventually(lambda: no_outstanding(http, r.url))


async def test_client_disconnect_cancels_both_node_calls(stub_nodes, router, http):
    stubs = stub_nodes([{"mode": "hang"}, {"stream_chunks": 4, "hold_last_chunk": True}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    resp = await http.post(f"{r.url}/generate", json={"text": "x", "stream": True})
    await next_event(resp)
    resp.close()  # the client goes away mid-stream
    await eventually(lambda: disconnected(http, stubs.urls[1]))
    await eventually(lambda: disconnected(http, stubs.urls[0]))
    await eventually(lambda: no_outstanding(http, r.url))


async def test_client_disconnect_cancels_both_node_calls_without_streaming(
        stub_nodes, router, http):
    stubs = stub_nodes([{"mode": "hang"}, {"mode": "hang"}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    request = asyncio.ensure_future(http.post(f"{r.url}/generate", json={"text": "x"}))
    await eventually(lambda: has_calls(http, stubs.urls[0]))
    await eventually(lambda: has_calls(http, stubs.urls[1]))
    request.cancel()  # the client goes away while both nodes work
    await asyncio.gather(request, return_exceptions=True)
    await eventually(lambda: disconnected(http, stubs.urls[0]))
    await eventually(lambda: disconnected(http, stubs.urls[1]))
    await eventually(lambda: no_outstanding(http, r.url))


async def has_calls(http: aiohttp.ClientSession, stub_url: str) -> bool:
    return bool(await calls(http, stub_url))


async def test_prefill_failure_mid_stream_ends_it_with_an_error_event(stub_nodes, router, http):
    prefill = {"routes": {"/v1/chat/completions": {"delay": 0.5, "status": 503,
                                                   "body": "text"}}}
    stubs = stub_nodes([prefill, {"stream_chunks": 4, "hold_last_chunk": True}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    body = {"messages": [{"role": "user", "content": "x"}], "stream": True}
    async with http.post(f"{r.url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200
        assert "tok0" in await next_event(resp)
        async with asyncio.timeout(10):
            rest = events(await resp.read())
    error: dict[str, Any] = json.loads(rest[-1])["error"]
    assert error["role"] == "prefill" and error["status"] == 503 and error["code"] == 503
    assert error["detail"].startswith("node error")
    await eventually(lambda: disconnected(http, stubs.urls[1]))
    await eventually(lambda: no_outstanding(http, r.url))


async def test_prefill_failure_before_decode_answers_is_the_request_error(
        stub_nodes, router, http):
    stubs = stub_nodes([{"routes": {"/generate": {"status": 500, "body": "json"}}},
                        {"mode": "hang"}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
    assert error["role"] == "prefill" and error["code"] == 500
    assert json.loads(error["detail"]) == {"error": "node failed", "code": 500}
    await eventually(lambda: disconnected(http, stubs.urls[1]))


async def test_decode_error_status_is_relayed(stub_nodes, router, http):
    stubs = stub_nodes([{}, {"routes": {"/generate": {"status": 400, "body": "json"}}}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["role"] == "decode" and error["code"] == error["status"] == 400
    assert error["message"] == "node failed" and error["type"] == "BadRequestError"
    await eventually(lambda: no_outstanding(http, r.url))


async def test_decode_reset_mid_stream_ends_it_with_an_error_event(stub_nodes, router, http):
    stubs = stub_nodes([{}, {"stream_chunks": 3, "hold_last_chunk": True}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]), poll_interval_s=3600)
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as resp:
        assert "tok0" in await next_event(resp)
        stubs.stop()  # the decode node dies mid-stream
        async with asyncio.timeout(10):
            rest = events(await resp.read())
    error = json.loads(rest[-1])["error"]
    assert error["role"] == "decode" and error["code"] == 502 and "status" not in error


async def test_mixed_node_streams_alone(stub_nodes, router, http):
    stubs = stub_nodes([{"stream_chunks": 2}])
    r = router(pd_fleet([], [], mixed=(stubs.urls[0],)))
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as resp:
        relayed = events(await resp.read())
    assert [json.loads(e)["text"] for e in relayed[:-1]] == ["tok0 ", "tok1 "]
    assert relayed[-1] == "[DONE]"
    assert "bootstrap_room" not in (await calls(http, stubs.urls[0]))[0]["json"]
