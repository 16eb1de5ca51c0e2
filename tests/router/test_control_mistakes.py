"""A caller's mistake on a control route is answered by the router with a clear 4xx: no node
is called, and no node failure is counted (metrics, operations log). Against a real router
over stub nodes, SGLang- and vLLM-shaped."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from pdfleet.vocabulary import NODE_MAX_BODY_BYTES
from tests.procs import Router, StubNodes

pytestmark = pytest.mark.timeout(60)

VALID_TAGS = "valid tags are weights, kv_cache, cuda_graph, weights_drafter"


@pytest.fixture
def fleet(stub_nodes: Any, router: Any) -> tuple[Router, StubNodes]:
    """A pdfleet-shaped prefill node, an SGLang-shaped decode node and a vLLM-shaped one."""
    stubs = stub_nodes([{}, {"engine": "sglang"}, {"engine": "vllm"}])
    return router([{"url": stubs.urls[0], "role": "prefill"},
                   {"url": stubs.urls[1], "role": "decode", "engine": "sglang"},
                   {"url": stubs.urls[2], "role": "decode", "engine": "vllm"}]), stubs


async def post(http: aiohttp.ClientSession, url: str, body: bytes | AsyncIterator[bytes] = b"",
               params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    async with http.post(url, data=body, params=params,
                         headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json(content_type=None)


async def assert_no_node_called(http: aiohttp.ClientSession, fleet: tuple[Router, StubNodes]
                                ) -> None:
    r, stubs = fleet
    for url in stubs.urls:
        async with http.get(f"{url}/_stub/requests") as resp:
            assert await resp.json() == [], url
    async with http.get(f"{r.url}/cluster/operations") as resp:
        assert (await resp.json())["operations"] == []
    async with http.get(f"{r.url}/metrics") as resp:
        metrics = await resp.text()
    assert "pdfleet_control_node_failures_total{" not in metrics
    async with http.get(f"{r.url}/is_sleeping") as resp:
        assert (await resp.json())["is_sleeping"] is False


@pytest.mark.parametrize("field", ["tagz", "tag", "Tags"])
async def test_a_field_within_two_edits_of_the_routes_is_a_400_naming_the_field_meant(
        fleet, http, field):
    r, _ = fleet
    body = json.dumps({field: ["weights"]}).encode()
    status, reply = await post(http, f"{r.url}/release_memory_occupation", body)
    assert (status, reply["detail"]) == (400, f"unknown field '{field}' (did you mean 'tags'?)")
    await assert_no_node_called(http, fleet)


@pytest.mark.parametrize("path, body, params", [
    ("/release_memory_occupation", b'{"tags": ["weight"]}', []),
    ("/wake_up", b"", [("tags", "bogus")]),
    ("/wake_up", b"", [("tags", "weights"), ("tags", "kv_cahce")]),
])
async def test_an_unknown_tag_in_the_body_or_query_is_a_400_naming_the_valid_tags(
        fleet, http, path, body, params):
    r, _ = fleet
    status, reply = await post(http, r.url + path, body, params)
    assert status == 400 and reply["detail"].endswith(VALID_TAGS), reply
    await assert_no_node_called(http, fleet)


@pytest.mark.parametrize("params", [
    [("role", "decode"), ("role", "prefill")],
    [("timeout", "1"), ("timeout", "2")],
])
async def test_a_query_key_given_twice_is_a_400_naming_it(fleet, http, params):
    r, _ = fleet
    status, reply = await post(http, f"{r.url}/release_memory_occupation", b"", params)
    key = params[0][0]
    assert (status, reply["detail"]) == (400, f"query key '{key}' is given more than once")
    await assert_no_node_called(http, fleet)


async def chunks_of(body: bytes, size: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_body_larger_than_a_node_accepts_is_a_413_at_the_router(fleet, http, chunked):
    r, _ = fleet
    body = json.dumps({"tags": None, "padding": "x" * (20 << 20)}).encode()
    status, reply = await post(http, f"{r.url}/release_memory_occupation",
                               chunks_of(body) if chunked else body)
    assert status == 413 and str(NODE_MAX_BODY_BYTES) in reply["detail"]
    await assert_no_node_called(http, fleet)


async def test_a_body_of_only_whitespace_is_a_400_not_every_tag(fleet, http):
    r, _ = fleet
    status, reply = await post(http, f"{r.url}/release_memory_occupation", b" ")
    assert status == 400 and "not valid JSON" in reply["detail"]
    await assert_no_node_called(http, fleet)


async def test_other_extra_fields_still_reach_sglang_speaking_nodes_verbatim(fleet, http):
    r, stubs = fleet
    raw = b'{"tags": ["weights", "kv_cache"], "rid": "abc", "drain_timeout_s": 2}'
    status, reply = await post(http, f"{r.url}/release_memory_occupation", raw)
    assert status == 200, reply
    for url in stubs.urls[:2]:
        async with http.get(f"{url}/_stub/requests") as resp:
            assert [s["body"].encode() for s in await resp.json()] == [raw]
