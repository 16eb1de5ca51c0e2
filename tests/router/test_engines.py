"""One router for pdfleet, SGLang and vLLM nodes, through SGLang's and vLLM's routes.

The fleet is a real pdfleet node plus stub nodes that answer exactly as SGLang and vLLM
servers do (tests/stubs/stub_engines.py); each stub records the calls it got.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from router.config import ConfigError, parse_config
from tests.procs import Process, eventually, free_port, wait_http_ok

pytestmark = pytest.mark.timeout(90)

NODE_TAGS = ["kv_cache", "weights"]  # what a CPU pdfleet node holds memory for
SGLANG = {"engine": "sglang"}
VLLM = {"engine": "vllm"}


@pytest.fixture(scope="module")
def pdfleet_node() -> Iterator[str]:
    """A real pdfleet node on the CPU, shared by this module's tests (each ends awake)."""
    port = free_port()
    process = Process([sys.executable, "-m", "node", "--role", "mixed", "--port", str(port),
                       "--device", "cpu", "--memory-backend", "cpu"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/health", process, timeout=90)
        yield url
    finally:
        process.stop()


async def call(http: aiohttp.ClientSession, method: str, url: str, body: bytes | None = None,
               params: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body else {}
    async with http.request(method, url, data=body, params=params, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


async def calls_to(http: aiohttp.ClientSession, stub_url: str) -> list[tuple[str, str, str, str]]:
    """(method, path, query, body) of every control call the stub got, in order."""
    async with http.get(f"{stub_url}/_stub/requests") as resp:
        seen = await resp.json()
    return [(s["method"], s["path"], s["query"], s["body"]) for s in seen]


async def node_tags(http: aiohttp.ClientSession, url: str) -> list[str]:
    async with http.get(f"{url}/is_sleeping") as resp:
        return sorted((await resp.json())["released_tags"])


def by_server(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["server"]: n for n in reply["nodes"]}


def three_engine_fleet(pdfleet_node: str, stub_nodes: Any, router: Any) -> tuple[Any, str, str]:
    """A router over a real pdfleet node, an SGLang-shaped and a vLLM-shaped stub, all mixed:
    the router and the two stubs' URLs."""
    sglang, vllm = stub_nodes([SGLANG, VLLM]).urls
    r = router([{"url": pdfleet_node, "role": "mixed"},
                {"url": sglang, "role": "mixed", "engine": "sglang"},
                {"url": vllm, "role": "mixed", "engine": "vllm"}])
    return r, sglang, vllm


async def test_mixed_fleet_sleeps_and_wakes_in_stages_through_sglang_routes(
        pdfleet_node, stub_nodes, router, http):
    r, sglang, vllm = three_engine_fleet(pdfleet_node, stub_nodes, router)

    status, body = await call(http, "POST", f"{r.url}/release_memory_occupation", b"{}")
    assert status == 200, body
    assert body["succeeded"] == 3
    assert await calls_to(http, sglang) == [("POST", "/release_memory_occupation", "", "{}")]
    assert await calls_to(http, vllm) == [("POST", "/sleep", "level=1", "")]
    assert await node_tags(http, pdfleet_node) == NODE_TAGS

    status, body = await call(http, "POST", f"{r.url}/resume_memory_occupation",
                              b'{"tags": ["weights"]}')
    assert status == 200, body
    assert (await calls_to(http, sglang))[1:] == [
        ("POST", "/resume_memory_occupation", "", '{"tags": ["weights"]}')]
    assert (await calls_to(http, vllm))[1:] == [("POST", "/wake_up", "tags=weights", "")]
    assert await node_tags(http, pdfleet_node) == ["kv_cache"]
    status, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert by_server(state)[vllm]["released_tags"] == ["kv_cache"]

    status, body = await call(http, "POST", f"{r.url}/resume_memory_occupation",
                              b'{"tags": ["kv_cache", "cuda_graph", "weights_drafter"]}')
    assert status == 200, body
    assert (await calls_to(http, vllm))[2:] == [("POST", "/wake_up", "tags=kv_cache", "")]
    assert (await calls_to(http, sglang))[2][3] == (
        '{"tags": ["kv_cache", "cuda_graph", "weights_drafter"]}')
    assert await node_tags(http, pdfleet_node) == []
    status, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert (state["is_sleeping"], state["all_sleeping"]) == (False, False)
    assert [n["released_tags"] for n in state["nodes"]] == [[], [], []]


async def test_mixed_fleet_sleeps_and_wakes_in_stages_through_vllm_routes(
        pdfleet_node, stub_nodes, router, http):
    r, sglang, vllm = three_engine_fleet(pdfleet_node, stub_nodes, router)

    status, body = await call(http, "POST", f"{r.url}/sleep", params=[("level", "2")])
    assert status == 200, body
    assert await calls_to(http, sglang) == [("POST", "/release_memory_occupation", "", "{}")]
    assert await calls_to(http, vllm) == [("POST", "/sleep", "level=2", "")]
    assert await node_tags(http, pdfleet_node) == NODE_TAGS

    status, body = await call(http, "POST", f"{r.url}/wake_up", params=[("tags", "weights")])
    assert status == 200, body
    assert (await calls_to(http, sglang))[1:] == [
        ("POST", "/resume_memory_occupation", "", '{"tags": ["weights"]}')]
    assert (await calls_to(http, vllm))[1:] == [("POST", "/wake_up", "tags=weights", "")]
    # Waking only the weights leaves the KV cache asleep everywhere.
    assert await node_tags(http, pdfleet_node) == ["kv_cache"]
    status, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert state["is_sleeping"] is True and state["all_sleeping"] is True
    tags = {n["server"]: n["released_tags"] for n in state["nodes"]}
    assert tags == {pdfleet_node: ["kv_cache"],
                    sglang: ["cuda_graph", "kv_cache", "weights_drafter"],
                    vllm: ["kv_cache"]}

    status, body = await call(http, "POST", f"{r.url}/wake_up",
                              params=[("tags", "kv_cache"), ("tags", "cuda_graph"),
                                      ("tags", "weights_drafter")])
    assert status == 200, body
    assert (await calls_to(http, vllm))[2:] == [("POST", "/wake_up", "tags=kv_cache", "")]
    assert json.loads((await calls_to(http, sglang))[2][3]) == {
        "tags": ["kv_cache", "cuda_graph", "weights_drafter"]}
    assert await node_tags(http, pdfleet_node) == []
    status, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert state["is_sleeping"] is False


async def test_wake_up_query_tags_wake_only_those_tags(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    await call(http, "POST", f"{r.url}/sleep")
    status, body = await call(http, "POST", f"{r.url}/wake_up", params=[("tags", "weights")])
    assert status == 200, body
    assert by_server(body)[stubs.urls[0]]["result"]["released_tags"] == [
        "cuda_graph", "kv_cache", "weights_drafter"]
    status, body = await call(http, "POST", f"{r.url}/wake_up", params=[("tags", "cuda_graph")])
    assert status == 200, body
    assert (await calls_to(http, stubs.urls[0]))[-1][3] == '{"tags": ["cuda_graph"]}'
    assert by_server(body)[stubs.urls[0]]["result"]["released_tags"] == [
        "kv_cache", "weights_drafter"]


async def test_vllm_shaped_staged_wake_leaves_a_mixed_fleet_awake_and_routed(
        pdfleet_node, stub_nodes, router, http):
    r, sglang, vllm = three_engine_fleet(pdfleet_node, stub_nodes, router)
    for params in ([], [("tags", "weights")], [("tags", "kv_cache")]):
        path = "/wake_up" if params else "/sleep"
        status, body = await call(http, "POST", r.url + path, params=params)
        assert status == 200, body
    # kv_cache brings SGLang's cuda_graph and weights_drafter back with it.
    assert json.loads((await calls_to(http, sglang))[-1][3]) == {
        "tags": ["kv_cache", "cuda_graph", "weights_drafter"]}
    assert (await calls_to(http, vllm))[-1] == ("POST", "/wake_up", "tags=kv_cache", "")
    _, state = await call(http, "GET", f"{r.url}/cluster/status")
    assert [(n["released_tags"], n["sleeping"]) for n in state["nodes"]] == [([], False)] * 3
    served = set()
    for _ in range(6):
        status, reply = await call(http, "POST", f"{r.url}/generate",
                                   b'{"text": "hi", "sampling_params": {"max_new_tokens": 1}}')
        assert status == 200, reply
        served.add(reply.get("served_by"))
    assert {int(sglang.rsplit(":", 1)[1]), int(vllm.rsplit(":", 1)[1])} <= served


async def test_sglang_shaped_routes_send_exactly_the_tags_asked(stub_nodes, router, http):
    stubs = stub_nodes([SGLANG])
    r = router([{"url": stubs.urls[0], "role": "mixed", "engine": "sglang"}])
    for path in ("release_memory_occupation", "resume_memory_occupation"):
        status, body = await call(http, "POST", f"{r.url}/{path}", b'{"tags": ["kv_cache"]}')
        assert status == 200, body
    assert [c[3] for c in await calls_to(http, stubs.urls[0])] == ['{"tags": ["kv_cache"]}'] * 2


async def test_sleep_mode_reaches_pdfleet_nodes_as_drain_and_vllm_as_its_query(
        stub_nodes, router, http):
    stubs = stub_nodes([{}, VLLM])
    pdfleet_like, vllm = stubs.urls
    r = router([{"url": pdfleet_like, "role": "mixed"},
                {"url": vllm, "role": "mixed", "engine": "vllm"}])
    status, body = await call(http, "POST", f"{r.url}/sleep", params=[("mode", "wait")])
    assert status == 200, body
    assert json.loads((await calls_to(http, pdfleet_like))[0][3]) == {"drain": "wait"}
    assert await calls_to(http, vllm) == [("POST", "/sleep", "level=1&mode=wait", "")]


async def test_vllm_node_fails_a_release_of_only_the_weights_and_is_not_called(
        stub_nodes, router, http):
    stubs = stub_nodes([SGLANG, VLLM])
    sglang, vllm = stubs.urls
    r = router([{"url": sglang, "role": "prefill", "engine": "sglang"},
                {"url": vllm, "role": "decode", "engine": "vllm"}])
    status, body = await call(http, "POST", f"{r.url}/release_memory_occupation",
                              b'{"tags": ["weights"]}')
    assert status == 502
    detail = body["detail"]
    assert detail["succeeded"] == [sglang]
    [failure] = detail["failures"]
    assert failure["server"] == vllm and "status" not in failure
    assert "vLLM sleeps weights and kv_cache together" in failure["error"]
    assert await calls_to(http, vllm) == []


async def test_vllm_node_treats_tags_it_lacks_as_a_no_op(stub_nodes, router, http):
    stubs = stub_nodes([VLLM])
    r = router([{"url": stubs.urls[0], "role": "mixed", "engine": "vllm"}])
    for path in ("release_memory_occupation", "resume_memory_occupation"):
        status, body = await call(http, "POST", f"{r.url}/{path}", b'{"tags": ["cuda_graph"]}')
        assert status == 200, body
        assert body["nodes"][0]["status"] is None
        assert body["nodes"][0]["result"] == {"noop_tags": ["cuda_graph"]}
    assert await calls_to(http, stubs.urls[0]) == []
    status, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert state["is_sleeping"] is False


async def test_vllm_wake_up_names_only_the_asked_tags_that_are_asleep(stub_nodes, router, http):
    stubs = stub_nodes([VLLM])
    vllm = stubs.urls[0]
    r = router([{"url": vllm, "role": "mixed", "engine": "vllm"}])
    await call(http, "POST", f"{r.url}/sleep")
    await call(http, "POST", f"{r.url}/wake_up", params=[("tags", "weights")])
    # vLLM ignores a wake_up naming a tag that is awake: weights must not be named again.
    status, body = await call(http, "POST", f"{r.url}/wake_up",
                              params=[("tags", "weights"), ("tags", "kv_cache")])
    assert status == 200, body
    assert (await calls_to(http, vllm))[-1] == ("POST", "/wake_up", "tags=kv_cache", "")
    async with http.get(f"{vllm}/is_sleeping") as resp:
        assert await resp.json() == {"is_sleeping": False}


async def test_polls_keep_a_vllm_nodes_partial_wake(stub_nodes, router, http):
    stubs = stub_nodes([VLLM])
    vllm = stubs.urls[0]
    r = router([{"url": vllm, "role": "mixed", "engine": "vllm"}])
    await call(http, "POST", f"{r.url}/sleep")
    await call(http, "POST", f"{r.url}/wake_up", params=[("tags", "weights")])
    _, before = await call(http, "GET", f"{r.url}/cluster/status")
    checked = before["nodes"][0]["checked_at"] or 0

    async def polled_again() -> bool:
        _, body = await call(http, "GET", f"{r.url}/cluster/status")
        return (body["nodes"][0]["checked_at"] or 0) > checked

    await eventually(polled_again)
    # vLLM's /is_sleeping still says true: the router keeps what it knows is released.
    _, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert state["nodes"][0]["released_tags"] == ["kv_cache"]


async def test_flush_calls_each_engines_own_route(stub_nodes, router, http):
    stubs = stub_nodes([SGLANG, VLLM])
    sglang, vllm = stubs.urls
    r = router([{"url": sglang, "role": "mixed", "engine": "sglang"},
                {"url": vllm, "role": "mixed", "engine": "vllm"}])
    status, body = await call(http, "POST", f"{r.url}/flush_cache", b"{}")
    assert status == 200, body
    assert await calls_to(http, sglang) == [("POST", "/flush_cache", "", "{}")]
    assert await calls_to(http, vllm) == [("POST", "/reset_prefix_cache", "", "")]


async def test_sglang_error_message_is_the_nodes_detail(stub_nodes, router, http):
    stubs = stub_nodes([{**SGLANG, "fail": "memory saver is not enabled"}])
    r = router([{"url": stubs.urls[0], "role": "mixed", "engine": "sglang"}])
    status, body = await call(http, "POST", f"{r.url}/release_memory_occupation", b"{}")
    assert status == 502
    [failure] = body["detail"]["failures"]
    assert (failure["status"], failure["detail"]) == (400, "memory saver is not enabled")


async def test_sglang_null_reply_is_success(stub_nodes, router, http):
    stubs = stub_nodes([SGLANG])
    r = router([{"url": stubs.urls[0], "role": "mixed", "engine": "sglang"}])
    status, body = await call(http, "POST", f"{r.url}/release_memory_occupation",
                              b'{"tags": ["kv_cache"]}')
    assert status == 200
    assert body["nodes"][0]["status"] == 200 and body["nodes"][0]["result"] is None
    status, state = await call(http, "GET", f"{r.url}/is_sleeping")
    assert state["nodes"][0]["released_tags"] == ["kv_cache"]


@pytest.mark.parametrize("body, params, words", [
    (b"[1, 2]", [], "JSON object"),
    (b"{oops", [], "not valid JSON"),
    (b'{"tags": "weights"}', [], "non-empty list of strings"),
    (b'{"tags": []}', [], "non-empty list of strings"),
    (b'{"tags": ["weights", 3]}', [], "non-empty list of strings"),
    (b'{"drain": "later"}', [], "drain"),
    (b"", [("level", "3")], "level"),
    (b"", [("mode", "soon")], "mode"),
])
async def test_bad_control_requests_get_400_and_no_node_is_called(
        stub_nodes, router, http, body, params, words):
    stubs = stub_nodes([{}, VLLM])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode", "engine": "vllm"}])
    status, reply = await call(http, "POST", f"{r.url}/sleep", body, params)
    assert status == 400 and words in reply["detail"]
    for url in stubs.urls:
        assert await calls_to(http, url) == []


@pytest.mark.parametrize("body, params", [
    (b'{"tags": ["kv_cache"]}', [("tags", "weights")]),
    (b'{"tags": null}', [("tags", "weights")]),
    (b'{"drain": "abort"}', [("mode", "wait")]),
])
async def test_query_and_body_that_disagree_get_400_and_no_node_is_called(
        stub_nodes, router, http, body, params):
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    path = "/sleep" if params[0][0] == "mode" else "/wake_up"
    status, reply = await call(http, "POST", r.url + path, body, params)
    assert status == 400 and "disagree" in reply["detail"]
    assert await calls_to(http, stubs.urls[0]) == []


async def test_status_polls_each_engine_in_its_own_api(stub_nodes, router, http):
    stubs = stub_nodes([SGLANG, VLLM])
    sglang, vllm = stubs.urls
    r = router([{"url": sglang, "role": "mixed", "engine": "sglang"},
                {"url": vllm, "role": "mixed", "engine": "vllm"}])
    async with http.post(f"{vllm}/sleep") as resp:  # slept behind the router's back
        assert resp.status == 200

    async def polled() -> bool:
        _, body = await call(http, "GET", f"{r.url}/cluster/status")
        nodes = by_server(body)
        return nodes[sglang]["health"] == "up" and nodes[vllm]["sleeping"] is True

    await eventually(polled)
    _, body = await call(http, "GET", f"{r.url}/cluster/status")
    nodes = by_server(body)
    assert (nodes[sglang]["engine"], nodes[vllm]["engine"]) == ("sglang", "vllm")
    assert nodes[sglang]["sleeping"] == "unknown"  # plain SGLang has no /is_sleeping
    assert nodes[vllm]["released_tags"] == ["kv_cache", "weights"]


async def test_workers_take_and_show_an_engine(stub_nodes, router, http):
    stubs = stub_nodes([VLLM])
    r = router([])
    new = json.dumps({"url": stubs.urls[0], "role": "decode", "engine": "vllm"}).encode()
    status, body = await call(http, "POST", f"{r.url}/workers", new)
    assert status == 201 and body["engine"] == "vllm"
    status, body = await call(http, "GET", f"{r.url}/workers")
    assert body["workers"][0]["engine"] == "vllm"
    bad = json.dumps({"url": "http://127.0.0.1:1", "role": "decode", "engine": "tgi"}).encode()
    status, body = await call(http, "POST", f"{r.url}/workers", bad)
    assert status == 422 and "engine" in body["detail"]


def test_config_names_an_unknown_engine_and_refuses_to_launch_a_vllm_node():
    node = {"url": "http://127.0.0.1:30001", "role": "mixed"}
    assert parse_config({"nodes": [node]}).nodes[0].engine == "sglang"
    assert parse_config({"nodes": [{**node, "engine": "vllm"}]}).nodes[0].engine == "vllm"
    with pytest.raises(ConfigError, match="engine must be one of sglang, vllm"):
        parse_config({"nodes": [{**node, "engine": "tgi"}]})
    with pytest.raises(ConfigError, match="started by its own server"):
        parse_config({"nodes": [{**node, "engine": "vllm", "launch": {"device": "cpu"}}]})
