"""PD generation routing through a real router to stub nodes (non-streaming)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from tests.procs import StubNodes, eventually
from tests.router.pd_support import (
    BOOTSTRAP_PORT,
    calls,
    cluster_nodes,
    disconnected,
    no_outstanding,
    pd_fleet,
)

pytestmark = pytest.mark.timeout(60)

BOOTSTRAP_FIELDS = ("bootstrap_host", "bootstrap_port", "bootstrap_room")


async def test_prefill_and_decode_get_the_same_bootstrap_fields(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    request = {"text": "hello", "sampling_params": {"max_new_tokens": 3}, "rid": "r1"}
    async with http.post(f"{r.url}/generate", json=request) as resp:
        assert resp.status == 200
    (prefill,), (decode,) = [await calls(http, u) for u in stubs.urls]
    assert prefill["path"] == decode["path"] == "/generate"
    assert prefill["json"] == decode["json"]
    sent = decode["json"]
    assert {k: sent[k] for k in request} == request
    assert sent["bootstrap_host"] == "127.0.0.1" and sent["bootstrap_port"] == BOOTSTRAP_PORT
    assert isinstance(sent["bootstrap_room"], int) and 0 <= sent["bootstrap_room"] < 2**63


async def test_each_request_gets_its_own_bootstrap_room(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    for _ in range(5):
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            assert resp.status == 200
    rooms = [c["json"]["bootstrap_room"] for c in await calls(http, stubs.urls[1])]
    assert len(set(rooms)) == 5


async def test_bootstrap_port_is_null_when_prefill_has_none(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]], bootstrap_port=None))
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 200
    sent = (await calls(http, stubs.urls[1]))[0]["json"]
    assert sent["bootstrap_port"] is None and sent["bootstrap_host"] == "127.0.0.1"


@pytest.mark.parametrize(("path", "request_body", "items"), [
    ("/generate", {"text": ["a", "b", "c"]}, 3),
    ("/generate", {"input_ids": [[1, 2], [3, 4]]}, 2),
    ("/generate", {"input_ids": [1, 2, 3]}, None),
    ("/v1/completions", {"model": "m", "prompt": ["a", "b"]}, 2),
    ("/v1/completions", {"model": "m", "prompt": "a"}, None),
    ("/v1/completions", {"model": "m", "prompt": [5, 6, 7]}, None),
    ("/v1/completions", {"model": "m", "prompt": "a", "n": 2}, 2),
    ("/v1/completions", {"model": "m", "prompt": ["a", "b"], "n": 3}, 6),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "a"}],
                              "n": 3}, 3),
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "a"}],
                              "n": 1}, None),
])
async def test_batched_requests_get_one_bootstrap_entry_per_item(
        stub_nodes, router, http, path, request_body, items):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}{path}", json=request_body) as resp:
        assert resp.status == 200
    (prefill,), (decode,) = [await calls(http, u) for u in stubs.urls]
    assert prefill["json"] == decode["json"]
    sent = decode["json"]
    if items is None:
        assert isinstance(sent["bootstrap_room"], int)
        assert sent["bootstrap_host"] == "127.0.0.1"
    else:
        assert sent["bootstrap_host"] == ["127.0.0.1"] * items
        assert sent["bootstrap_port"] == [BOOTSTRAP_PORT] * items
        assert len(set(sent["bootstrap_room"])) == items


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_openai_routes_return_decode_reply(stub_nodes, router, http, path):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    body = {"model": "stub-model", "prompt": "hi",
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    async with http.post(f"{r.url}{path}", json=body) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        reply = await resp.json()
    assert reply["served_by"] == stubs.ports[1]
    (sent,) = await calls(http, stubs.urls[1])
    assert sent["path"] == path
    assert reply["bootstrap_room"] == sent["json"]["bootstrap_room"]
    (prefill,) = await calls(http, stubs.urls[0])
    assert all(prefill["json"][k] == sent["json"][k] for k in BOOTSTRAP_FIELDS)


async def test_decode_error_is_its_status_and_message_in_openais_shape(stub_nodes, router, http):
    stubs = stub_nodes([{}, {"routes": {"/generate": {"status": 429, "body": "json"}}}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 429
        assert await resp.json() == {"error": {
            "message": "node failed", "type": "TooManyRequestsError", "code": 429,
            "server": stubs.urls[1], "role": "decode", "status": 429,
            "detail": '{"error": "node failed", "code": 429}'}}


async def test_v1_models_comes_from_a_node(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.get(f"{r.url}/v1/models") as resp:
        assert resp.status == 200
        assert (await resp.json())["data"][0]["id"] == "stub-model"


async def test_prefill_http_error_is_reported_promptly_and_decode_is_cancelled(
        stub_nodes, router, http):
    prefill_fails = {"routes": {"/generate": {"status": 500, "body": "text", "size": 5000}}}
    stubs = stub_nodes([prefill_fails, {"mode": "hang"}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]), error_detail_bytes=100)
    started = time.monotonic()
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 500
        error = (await resp.json())["error"]
    assert time.monotonic() - started < 3
    assert error["role"] == "prefill" and error["server"] == stubs.urls[0]
    assert error["status"] == error["code"] == 500
    assert error["message"] == error["detail"]  # a body with no message is told as its text
    assert error["detail"].startswith("node error") and len(error["detail"]) == 100
    await eventually(lambda: disconnected(http, stubs.urls[1]))
    await eventually(lambda: no_outstanding(http, r.url))


async def test_prefill_reset_is_a_transport_error_and_is_not_retried(stub_nodes, router, http):
    stubs = stub_nodes([{"routes": {"/generate": {"mode": "reset"}}}, {"mode": "hang"}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert error["role"] == "prefill" and "status" not in error and error["error"]
    assert error["code"] == 502
    assert len(await calls(http, stubs.urls[0])) == 1
    await eventually(lambda: disconnected(http, stubs.urls[1]))


async def test_hung_decode_is_bounded_by_request_timeout(stub_nodes, router, http):
    stubs = stub_nodes([{}, {"mode": "hang"}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]), request_timeout_s=1)
    started = time.monotonic()
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 504
        assert (await resp.json())["error"]["error"].startswith("TimeoutError")
    assert 0.9 < time.monotonic() - started < 3


async def test_sleeping_cluster_gets_503_with_retry_after(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/release_memory_occupation", json={}) as resp:
        assert resp.status == 200
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 503
        assert int(resp.headers["Retry-After"]) >= 1
        assert "sleeping" in (await resp.json())["error"]["message"]
    assert [c["path"] for c in await calls(http, stubs.urls[1])] == [
        "/release_memory_occupation"]
    async with http.post(f"{r.url}/resume_memory_occupation", json={}) as resp:
        assert resp.status == 200
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 200


async def test_partly_sleeping_fleet_still_serves_on_the_awake_pair(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}, {}])
    r = router(pd_fleet(stubs.urls[:2], stubs.urls[2:]))
    for url in (stubs.urls[0], stubs.urls[2]):  # one prefill and one decode go to sleep
        async with http.post(f"{url}/release_memory_occupation", json={}) as resp:
            assert resp.status == 200
    await eventually(lambda: _sleeping(http, r.url, {stubs.urls[0], stubs.urls[2]}))
    for _ in range(4):
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            assert resp.status == 200 and (await resp.json())["served_by"] == stubs.ports[3]
    assert len(await calls(http, stubs.urls[1])) == 4


async def _sleeping(http, router_url: str, urls: set[str]) -> bool:
    nodes = await cluster_nodes(http, router_url)
    return {u for u, n in nodes.items() if n["sleeping"] is True} == urls


async def test_no_healthy_pair_is_503_with_a_clear_message(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router(pd_fleet([stubs.urls[0]], []))
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 503
        assert "no healthy prefill/decode pair" in (await resp.json())["error"]["message"]
    empty = router([])
    async with http.post(f"{empty.url}/v1/completions", json={"prompt": "x"}) as resp:
        assert resp.status == 503 and "no nodes" in (await resp.json())["error"]["message"]


async def test_node_failing_at_transport_level_is_marked_down_and_skipped(
        stub_nodes, router, http):
    stubs = stub_nodes([{"routes": {"/generate": {"mode": "reset"}}}, {}, {}])
    r = router(pd_fleet(stubs.urls[:2], stubs.urls[2:]), poll_interval_s=3600)
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 502  # round robin starts with the first prefill node
    assert (await cluster_nodes(http, r.url))[stubs.urls[0]]["health"] == "down"
    for _ in range(4):
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            assert resp.status == 200
    assert len(await calls(http, stubs.urls[0])) == 1
    assert len(await calls(http, stubs.urls[1])) == 4


async def test_not_yet_polled_node_is_routable(stub_nodes, router, http):
    stubs = stub_nodes([{"status_routes": False}, {"status_routes": False}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]), poll_interval_s=3600)
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 200


async def test_refused_prefill_is_retried_on_another_pair(stub_nodes, router, http):
    doomed = StubNodes([{}])
    alive = stub_nodes([{}, {"routes": {"/generate": {"delay": 0.5}}}])
    r = router(pd_fleet([doomed.urls[0], alive.urls[0]], [alive.urls[1]]),
               poll_interval_s=3600)
    await eventually(lambda: _all_up(http, r.url))
    doomed.stop()  # the router still believes it up: its next call is refused
    for _ in range(2):  # round robin sends one of the two to the refusing node
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            assert resp.status == 200
    assert (await cluster_nodes(http, r.url))[doomed.urls[0]]["health"] == "down"
    assert len(await calls(http, alive.urls[0])) == 2
    decode_calls = await calls(http, alive.urls[1])
    # The decode half of the refused pair may have been sent before the refusal was known
    # (the decode stub takes 0.5 s, the refusal is immediate); it was then cancelled.
    assert sum(c.get("completed", False) for c in decode_calls) == 2
    assert all(c.get("completed") or c.get("disconnected") for c in decode_calls)


async def test_refused_decode_is_retried_on_another_pair(stub_nodes, router, http):
    doomed = StubNodes([{}])
    alive = stub_nodes([{}, {}])
    r = router(pd_fleet([alive.urls[0]], [doomed.urls[0], alive.urls[1]]),
               poll_interval_s=3600)
    await eventually(lambda: _all_up(http, r.url))
    doomed.stop()
    for _ in range(2):
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["served_by"] == alive.ports[1]
    assert (await cluster_nodes(http, r.url))[doomed.urls[0]]["health"] == "down"


async def test_retries_stop_after_three_pairs(stub_nodes, router, http):
    doomed = StubNodes([{}, {}, {}, {}])
    alive = stub_nodes([{}])
    r = router(pd_fleet(doomed.urls, [alive.urls[0]]), poll_interval_s=3600)
    await eventually(lambda: _all_up(http, r.url))
    doomed.stop()
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert resp.status == 502
        error = (await resp.json())["error"]
    assert error["role"] == "prefill" and "ConnectionRefusedError" in error["error"]
    nodes = await cluster_nodes(http, r.url)
    assert sum(nodes[u]["health"] == "down" for u in doomed.urls) == 3


async def _all_up(http, router_url: str) -> bool:
    return all(n["health"] == "up" for n in (await cluster_nodes(http, router_url)).values())


async def test_round_robin_alternates_pairs(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}, {}])
    prefill, decode = stubs.urls[:2], stubs.urls[2:]
    r = router(pd_fleet(prefill, decode))
    served = []
    for _ in range(4):
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            served.append((await resp.json())["served_by"])
    assert served == [stubs.ports[2], stubs.ports[3]] * 2
    for p_url, d_url in zip(prefill, decode, strict=True):
        p_rooms = [c["json"]["bootstrap_room"] for c in await calls(http, p_url)]
        d_rooms = [c["json"]["bootstrap_room"] for c in await calls(http, d_url)]
        assert len(p_rooms) == 2 and p_rooms == d_rooms


async def test_random_policy_uses_every_pair(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}, {}])
    r = router(pd_fleet(stubs.urls[:2], stubs.urls[2:]), policy="random")
    for _ in range(40):
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            assert resp.status == 200
    served = [len(await calls(http, u)) for u in stubs.urls]
    assert all(served), served  # each node misses 40 requests with p = 2**-40


async def test_mixed_node_serves_alone_with_the_body_verbatim(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router(pd_fleet([], [], mixed=(stubs.urls[0],)))
    raw = b'{"text": "x",  "sampling_params": {"max_new_tokens": 2}}'
    async with http.post(f"{r.url}/generate", data=raw,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 200
    (sent,) = await calls(http, stubs.urls[0])
    assert sent["body"].encode("latin-1") == raw


async def test_pd_pair_is_preferred_over_mixed_nodes(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]], mixed=(stubs.urls[2],)),
               poll_interval_s=3600)
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert (await resp.json())["served_by"] == stubs.ports[1]
    async with http.post(f"{r.url}/release_memory_occupation?role=prefill", json={}) as resp:
        assert resp.status == 200  # no pair left awake: the mixed node serves
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert (await resp.json())["served_by"] == stubs.ports[2]


@pytest.mark.parametrize(("raw", "status", "words"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b"", 400, "not valid JSON"),
    (b'{"text": "x", "stream": "yes"}', 422, "stream must be true or false"),
])
async def test_bad_request_body_is_rejected_and_reaches_no_node(
        stub_nodes, router, http, raw, status, words):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.post(f"{r.url}/generate", data=raw,
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == status
        assert words in (await resp.json())["error"]["message"]
    assert await calls(http, stubs.urls[0]) == []


async def test_least_outstanding_picks_the_idle_decode_node(stub_nodes, router, http):
    stubs = stub_nodes([{}, {"hold_last_chunk": True}, {}])
    r = router(pd_fleet([stubs.urls[0]], stubs.urls[1:]), policy="least_outstanding")
    # A stream held open keeps one request outstanding on the first decode node (ties go to
    # the first node, so it lands there).
    async with http.post(f"{r.url}/generate", json={"text": "x", "stream": True}) as held:
        assert b"tok0" in await held.content.readline()
        for _ in range(3):
            async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
                assert (await resp.json())["served_by"] == stubs.ports[2]
        async with http.post(f"{stubs.urls[1]}/_stub/release") as resp:
            assert resp.status == 200
        assert (await held.read()).endswith(b"data: [DONE]\n\n")
    await eventually(lambda: no_outstanding(http, r.url))
    async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
        assert (await resp.json())["served_by"] == stubs.ports[1]


async def test_generation_routes_take_post_only(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))
    async with http.get(f"{r.url}/generate") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert "POST" in (await resp.json())["error"]["message"]


async def test_oversized_generation_body_is_413_and_reaches_no_node(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]), max_body_bytes=4096)
    async with http.post(f"{r.url}/v1/completions", json={"prompt": "a" * 8000}) as resp:
        assert resp.status == 413
        error = (await resp.json())["error"]
    assert error["code"] == 413 and "larger than 4096 bytes" in error["message"]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit counts bytes
        for _ in range(8):
            yield b"a" * 1000

    async with http.post(f"{r.url}/generate", data=chunked()) as resp:
        assert resp.status == 413
    assert await calls(http, stubs.urls[0]) == []


async def test_least_outstanding_spreads_a_burst_evenly(stub_nodes, router, http):
    slow = {"routes": {"/generate": {"delay": 0.5}}}
    stubs = stub_nodes([{}, slow, slow])
    r = router(pd_fleet([stubs.urls[0]], stubs.urls[1:]), policy="least_outstanding")

    async def one() -> int:
        async with http.post(f"{r.url}/generate", json={"text": "x"}) as resp:
            return (await resp.json())["served_by"]

    served = await asyncio.gather(*(one() for _ in range(10)))
    assert sorted(served.count(p) for p in stubs.ports[1:]) == [5, 5]
