"""Prefill/decode disaggregation: KV hand-off between two real nodes."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp
import pytest

from tests.node.conftest import NodeProcess, StartNode, sse_events, wait_for_info
from tests.procs import free_port

pytestmark = pytest.mark.timeout(60)

HANDOFF_TIMEOUT_S = 2.0
_rooms = itertools.count(1000)


@pytest.fixture(scope="module")
def prefill(start_node: StartNode) -> NodeProcess:
    return start_node(role="prefill")


@pytest.fixture(scope="module")
def decode(start_node: StartNode) -> NodeProcess:
    return start_node("--kv-handoff-timeout-s", str(HANDOFF_TIMEOUT_S), role="decode")


def pd_body(prefill: NodeProcess, prompt: str, **sampling: Any) -> dict[str, Any]:
    return {
        "text": prompt,
        "sampling_params": {"max_new_tokens": 20, **sampling},
        "bootstrap_host": "127.0.0.1",
        "bootstrap_port": prefill.bootstrap_port,
        "bootstrap_room": next(_rooms),
    }


async def post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as reply:
        return reply.status, await reply.json()


@pytest.mark.parametrize(
    "sampling", [{"temperature": 0}, {"temperature": 0.8, "top_p": 0.9, "seed": 11}]
)
async def test_prefill_and_decode_give_the_mixed_nodes_tokens(
    http: aiohttp.ClientSession,
    prefill: NodeProcess,
    decode: NodeProcess,
    mixed_node: NodeProcess,
    sampling: dict[str, Any],
) -> None:
    body = pd_body(prefill, "disaggregated prompt", **sampling)
    (p_status, p_reply), (d_status, d_reply), (m_status, m_reply) = await asyncio.gather(
        post(http, f"{prefill.url}/generate", body),
        post(http, f"{decode.url}/generate", body),
        post(http, f"{mixed_node.url}/generate", body),
    )
    assert (p_status, d_status, m_status) == (200, 200, 200), (p_reply, d_reply, m_reply)
    assert len(m_reply["output_ids"]) == 20
    assert d_reply["output_ids"] == m_reply["output_ids"]
    assert d_reply["text"] == m_reply["text"]
    assert p_reply["output_ids"] == m_reply["output_ids"][:1]
    assert d_reply["meta_info"]["prompt_tokens"] == m_reply["meta_info"]["prompt_tokens"]


async def test_decode_first_then_prefill_streams_the_same_tokens(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, mixed_node: NodeProcess
) -> None:
    body = pd_body(prefill, "decode arrives first", temperature=0)
    _, expected = await post(http, f"{mixed_node.url}/generate", body)

    async def stream_from_decode() -> list[Any]:
        async with http.post(f"{decode.url}/generate", json={**body, "stream": True}) as reply:
            assert reply.status == 200
            return await sse_events(reply)

    streaming = asyncio.create_task(stream_from_decode())
    await wait_for_info(http, decode, lambda info: info["inflight"] == 1)
    status, _ = await post(http, f"{prefill.url}/generate", body)
    assert status == 200
    events = await streaming
    assert events[-1] == "[DONE]"
    assert len(events) == 21
    assert events[-2]["output_ids"] == expected["output_ids"]


async def test_prefill_first_holds_kv_until_claimed(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, mixed_node: NodeProcess
) -> None:
    body = pd_body(prefill, "prefill arrives first", temperature=0)
    status, _ = await post(http, f"{prefill.url}/generate", body)
    assert status == 200
    held = prefill.info()
    assert held["held_kv_handoffs"] == 1 and held["inflight"] == 1
    status, reply = await post(http, f"{decode.url}/generate", body)
    assert status == 200
    _, expected = await post(http, f"{mixed_node.url}/generate", body)
    assert reply["output_ids"] == expected["output_ids"]
    assert prefill.info()["held_kv_handoffs"] == 0
    async with http.get(
        f"http://127.0.0.1:{prefill.bootstrap_port}/kv/{body['bootstrap_room']}"
    ) as again:
        assert again.status == 410
        assert "already handed off" in (await again.json())["message"]


async def test_decode_fails_clearly_when_kv_never_arrives(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    body = pd_body(prefill, "nobody prefills this")
    started = time.monotonic()
    status, reply = await post(http, f"{decode.url}/generate", body)
    assert status == 504
    assert reply["success"] is False
    assert f"no KV for bootstrap_room {body['bootstrap_room']}" in reply["message"]
    assert HANDOFF_TIMEOUT_S <= time.monotonic() - started < HANDOFF_TIMEOUT_S + 5
    async with http.post(
        f"{decode.url}/generate", json={**pd_body(prefill, "again"), "stream": True}
    ) as stream:
        assert stream.status == 200
        events = await sse_events(stream)
    assert events[-1] == "[DONE]"
    assert "no KV for bootstrap_room" in events[-2]["error"]["message"]
    assert decode.info()["inflight"] == 0


async def test_decode_fails_clearly_when_prefill_is_unreachable(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    body = {**pd_body(prefill, "nobody listens"), "bootstrap_port": free_port()}
    status, reply = await post(http, f"{decode.url}/generate", body)
    assert status == 504
    assert "no KV for bootstrap_room" in reply["message"]


async def test_pd_nodes_need_bootstrap_fields(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    for node, phrase in [(prefill, "bootstrap_room"), (decode, "bootstrap_host")]:
        status, reply = await post(http, f"{node.url}/generate", {"text": "no room"})
        assert status == 400
        assert phrase in reply["message"]


async def assert_kv_freed(http: aiohttp.ClientSession, prefill: NodeProcess, room: int,
                          why: str) -> None:
    """The prefill node holds no KV and no request any more, and its bootstrap port answers
    410 for `room`, saying `why`."""
    await wait_for_info(
        http, prefill, lambda info: info["held_kv_handoffs"] == 0 and info["inflight"] == 0
    )
    async with http.get(f"http://127.0.0.1:{prefill.bootstrap_port}/kv/{room}") as reply:
        assert reply.status == 410
        assert why in (await reply.json())["message"]


async def test_prefill_drops_unclaimed_kv_after_ttl(
    http: aiohttp.ClientSession, start_node: StartNode
) -> None:
    short_ttl = start_node("--kv-ttl-s", "1", role="prefill")
    body = pd_body(short_ttl, "nobody decodes this")
    status, _ = await post(http, f"{short_ttl.url}/generate", body)
    assert status == 200
    assert short_ttl.info()["held_kv_handoffs"] == 1
    await assert_kv_freed(http, short_ttl, body["bootstrap_room"], "expired")


@pytest.mark.parametrize("prefill_first", [True, False])
async def test_a_decode_node_that_refuses_declines_the_kv_so_prefill_frees_it_at_once(
    http: aiohttp.ClientSession, start_node: StartNode, prefill_first: bool
) -> None:
    # A TTL far past the test's bound: only the decline can free the KV in time.
    long_ttl = start_node("--kv-ttl-s", "600", role="prefill")
    asleep = start_node(role="decode")
    status, _ = await post(http, f"{asleep.url}/release_memory_occupation", {"tags": None})
    assert status == 200
    body = pd_body(long_ttl, "decode is asleep")
    to_prefill = post(http, f"{long_ttl.url}/generate", body)
    to_decode = post(http, f"{asleep.url}/generate", body)
    if prefill_first:
        prefill_status, _ = await to_prefill
        decode_status, _ = await to_decode
    else:
        decode_status, _ = await to_decode
        prefill_status, _ = await to_prefill
    assert (prefill_status, decode_status) == (200, 503)
    await assert_kv_freed(http, long_ttl, body["bootstrap_room"], "declined by its decode node")


async def test_n_choices_hand_off_one_room_each(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, mixed_node: NodeProcess
) -> None:
    chat = {"messages": [{"role": "user", "content": "three choices"}], "max_tokens": 10,
            "temperature": 0}
    rooms = [next(_rooms) for _ in range(3)]
    body = {**chat, "n": 3, "bootstrap_host": ["127.0.0.1"] * 3,
            "bootstrap_port": [prefill.bootstrap_port] * 3, "bootstrap_room": rooms}
    url = "{}/v1/chat/completions"
    (p_status, p_reply), (d_status, d_reply), (m_status, m_reply) = await asyncio.gather(
        post(http, url.format(prefill.url), body),
        post(http, url.format(decode.url), body),
        post(http, url.format(mixed_node.url), chat),
    )
    assert (p_status, d_status, m_status) == (200, 200, 200), (p_reply, d_reply)
    expected = m_reply["choices"][0]["message"]["content"]
    assert [c["index"] for c in d_reply["choices"]] == [0, 1, 2]
    assert [c["message"]["content"] for c in d_reply["choices"]] == [expected] * 3
    assert d_reply["usage"]["completion_tokens"] == 30
    assert prefill.info()["held_kv_handoffs"] == 0


async def test_a_list_of_bootstrap_rooms_must_have_one_per_choice(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    body = {"prompt": "x", "n": 3, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": prefill.bootstrap_port, "bootstrap_room": [1, 2]}
    status, reply = await post(http, f"{decode.url}/v1/completions", body)
    assert status == 400
    assert "bootstrap_room is a list of 2; the request has 3 choices" in reply["error"]["message"]


async def test_an_openai_stream_ends_with_an_openai_error_event(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess
) -> None:
    body = {"prompt": "nobody prefills this either", "stream": True,
            "bootstrap_host": "127.0.0.1", "bootstrap_port": prefill.bootstrap_port,
            "bootstrap_room": next(_rooms)}
    async with http.post(f"{decode.url}/v1/completions", json=body) as stream:
        assert stream.status == 200
        events = await sse_events(stream)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["type"] == "GatewayTimeoutError" and error["code"] == 504
    assert "no KV for bootstrap_room" in error["message"]


@pytest.mark.parametrize("prefill_first", [True, False])
async def test_a_prefill_node_that_refuses_fails_the_decode_nodes_pull_at_once(
    http: aiohttp.ClientSession, start_node: StartNode, prefill_first: bool
) -> None:
    # A hand-off timeout far past the test's bound: only the refusal can end the pull in time.
    asleep = start_node(role="prefill")
    waiting = start_node("--kv-handoff-timeout-s", "300", role="decode")
    status, _ = await post(http, f"{asleep.url}/release_memory_occupation", {"tags": None})
    assert status == 200
    body = pd_body(asleep, "prefill is asleep")
    to_prefill = post(http, f"{asleep.url}/generate", body)
    to_decode = asyncio.ensure_future(post(http, f"{waiting.url}/generate", body))
    if prefill_first:
        prefill_status, _ = await to_prefill
    else:
        await wait_for_info(http, waiting, lambda info: info["inflight"] == 1)
        prefill_status, _ = await to_prefill
    async with asyncio.timeout(20):
        decode_status, reply = await to_decode
    assert (prefill_status, decode_status) == (503, 503)
    assert "refused the request" in str(reply)
    assert waiting.info()["inflight"] == 0
