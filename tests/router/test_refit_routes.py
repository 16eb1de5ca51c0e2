"""The refit through the router: pause, weight updates and continue, in SGLang's and vLLM's
routes, to a fleet of a pdfleet-shaped stub node (it echoes any POST), an SGLang-shaped and a
vLLM-shaped one (tests/stubs/stub_engines.py); and /fanout/{path}. Each stub records the
calls it got."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.procs import Router, eventually

pytestmark = pytest.mark.timeout(60)

PDFLEET, SGLANG, VLLM = {}, {"engine": "sglang"}, {"engine": "vllm"}
UPDATE = {"model_path": "/ckpt/step-2.safetensors", "weight_version": "v2"}
GROUP = {"master_address": "10.0.0.1", "master_port": 29500, "rank_offset": 1,
         "group_name": "refit", "backend": "gloo"}


async def post(http: aiohttp.ClientSession, url: str, body: Any = None, *,
               raw: bytes | None = None, params: list[tuple[str, str]] | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=data, params=params, headers=hdrs) as resp:
        return resp.status, await resp.json(content_type=None)


async def posts_to(http: aiohttp.ClientSession, stub_url: str) -> list[tuple[str, str, Any]]:
    """(path, query, JSON body or None) of every POST the stub got, in order."""
    async with http.get(f"{stub_url}/_stub/requests") as resp:
        seen = await resp.json()
    return [(s["path"], s["query"], json.loads(s["body"]) if s["body"] else None)
            for s in seen if s["method"] == "POST"]


def rows(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every node's row of a 200 or a 502, by URL."""
    report = reply.get("detail", reply)
    return {r["server"]: r for r in [*report["nodes"], *report.get("failures", [])]}


@pytest.fixture
def fleet(stub_nodes: Any, router: Any) -> tuple[Router, list[str]]:
    """A router over a pdfleet-shaped, an SGLang-shaped and a vLLM-shaped node, all mixed."""
    urls = stub_nodes([PDFLEET, SGLANG, VLLM]).urls
    return router([{"url": urls[0], "role": "mixed"},
                   {"url": urls[1], "role": "mixed", "engine": "sglang"},
                   {"url": urls[2], "role": "mixed", "engine": "vllm"}]), urls


async def test_pause_generation_reaches_each_engine_in_its_own_words(fleet, http):
    r, (pdfleet, sglang, vllm) = fleet
    status, reply = await post(http, f"{r.url}/pause_generation", {"mode": "in_place"})
    assert status == 200 and reply["succeeded"] == 3, reply
    assert await posts_to(http, pdfleet) == [("/pause_generation", "", {"mode": "in_place"})]
    assert await posts_to(http, sglang) == [("/pause_generation", "", {"mode": "in_place"})]
    assert await posts_to(http, vllm) == [("/pause", "mode=keep", None)]
    assert rows(reply)[vllm]["result"] == {"status": "paused"}

    status, reply = await post(http, f"{r.url}/pause_generation")
    assert status == 200, reply
    # SGLang's handler needs a body: no body is the empty object, its default mode (abort).
    assert (await posts_to(http, sglang))[1] == ("/pause_generation", "", {})
    assert (await posts_to(http, vllm))[1] == ("/pause", "mode=abort", None)


async def test_refit_operations_reach_the_operations_log_and_the_metrics(fleet, http):
    r, _ = fleet
    assert (await post(http, f"{r.url}/pause_generation", {"mode": "retract"}))[0] == 502
    assert (await post(http, f"{r.url}/update_weights_from_disk", UPDATE))[0] == 200
    async with http.get(f"{r.url}/cluster/operations") as resp:
        operations = (await resp.json())["operations"]
    assert [(o["operation"], o["outcome"]) for o in operations] == [
        ("update_weights_from_disk", "success"), ("pause_generation", "partial")]
    async with http.get(f"{r.url}/metrics") as resp:
        metrics = await resp.text()
    assert ('pdfleet_control_operations_total{operation="pause_generation",outcome="partial"} '
            '1.0') in metrics
    assert 'pdfleet_control_node_failures_total{kind="other",node=' in metrics


async def test_a_retract_is_a_vllm_nodes_failure_and_the_others_pause(fleet, http):
    r, (pdfleet, sglang, vllm) = fleet
    status, reply = await post(http, f"{r.url}/pause_generation", {"mode": "retract"})
    assert status == 502
    detail = reply["detail"]
    assert detail["message"] == "pause_generation failed on 1/3 nodes"
    assert sorted(detail["succeeded"]) == sorted([pdfleet, sglang])
    (failure,) = detail["failures"]
    assert failure["server"] == vllm and "vLLM cannot retract" in failure["error"]
    assert await posts_to(http, vllm) == []


async def test_vllms_pause_goes_to_vllm_as_it_came_and_to_sglang_in_its_modes(fleet, http):
    r, (pdfleet, sglang, vllm) = fleet
    status, reply = await post(http, f"{r.url}/pause",
                               params=[("mode", "keep"), ("clear_cache", "false"),
                                       ("timeout", "5")])
    assert status == 200, reply
    assert await posts_to(http, vllm) == [("/pause", "mode=keep&clear_cache=false", None)]
    assert await posts_to(http, sglang) == [("/pause_generation", "", {"mode": "in_place"})]
    assert await posts_to(http, pdfleet) == [("/pause_generation", "", {"mode": "in_place"})]


async def test_pause_wait_drains_pdfleet_nodes_and_a_plain_sglang_server_refuses_it(fleet, http):
    r, (pdfleet, sglang, vllm) = fleet
    status, reply = await post(http, f"{r.url}/pause", params=[("mode", "wait")])
    assert status == 502
    (failure,) = reply["detail"]["failures"]
    assert failure["server"] == sglang and failure["status"] == 400
    assert failure["detail"].startswith("this node refused pause mode 'wait'")
    assert sorted(reply["detail"]["succeeded"]) == sorted([pdfleet, vllm])
    assert await posts_to(http, pdfleet) == [("/pause_generation", "", {"mode": "wait"})]
    assert await posts_to(http, vllm) == [("/pause", "mode=wait", None)]


@pytest.mark.parametrize("route", ["/continue_generation", "/resume"])
async def test_continue_and_vllms_resume_continue_every_engine(fleet, http, route):
    r, (pdfleet, sglang, vllm) = fleet
    status, reply = await post(http, r.url + route)
    assert status == 200 and reply["operation"] == "continue_generation", reply
    assert await posts_to(http, pdfleet) == [("/continue_generation", "", {})]
    assert await posts_to(http, sglang) == [("/continue_generation", "", {})]
    assert await posts_to(http, vllm) == [("/resume", "", None)]


async def test_update_from_disk_is_sglangs_body_verbatim_and_vllms_reload_weights(fleet, http):
    r, (pdfleet, sglang, vllm) = fleet
    raw = b'{"model_path": "/ckpt/step-2.safetensors",  "weight_version": "v2", "keep": 1}'
    status, reply = await post(http, f"{r.url}/update_weights_from_disk", raw=raw)
    assert status == 200 and reply["succeeded"] == 3, reply
    for url in (pdfleet, sglang):
        async with http.get(f"{url}/_stub/requests") as resp:
            (seen,) = [s for s in await resp.json() if s["method"] == "POST"]
        assert (seen["path"], seen["body"].encode()) == ("/update_weights_from_disk", raw)
    assert await posts_to(http, vllm) == [("/collective_rpc", "", {
        "method": "reload_weights", "kwargs": {"weights_path": "/ckpt/step-2.safetensors"}})]
    assert rows(reply)[sglang]["result"]["success"] is True
    async with http.get(f"{sglang}/get_weight_version") as resp:
        assert await resp.json() == {"weight_version": "v2"}


async def test_an_update_to_a_version_a_node_has_is_a_no_op_unless_forced(fleet, http):
    r, urls = fleet
    status, _ = await post(http, f"{r.url}/update_weights_from_disk", UPDATE)
    assert status == 200
    status, reply = await post(http, f"{r.url}/update_weights_from_disk", UPDATE)
    assert status == 200 and reply["succeeded"] == 3, reply
    for url in urls:
        assert rows(reply)[url]["status"] is None
        assert rows(reply)[url]["result"] == {"noop": "already at v2"}
        assert len(await posts_to(http, url)) == 1
    status, reply = await post(http, f"{r.url}/update_weights_from_disk", UPDATE,
                               params=[("force", "true")])
    assert status == 200 and all(row["status"] == 200 for row in rows(reply).values())
    assert [len(await posts_to(http, url)) for url in urls] == [2, 2, 2]
    # Another version goes to every node.
    status, _ = await post(http, f"{r.url}/update_weights_from_disk",
                           {**UPDATE, "weight_version": "v3"})
    assert status == 200 and [len(await posts_to(http, url)) for url in urls] == [3, 3, 3]


async def test_a_retry_after_a_partial_update_touches_only_the_node_left_behind(
        stub_nodes, router, http):
    failing = {"engine": "sglang", "routes": {"/update_weights_from_disk": {"fail": "disk full"}}}
    stubs = stub_nodes([PDFLEET, failing])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode", "engine": "sglang"}])
    status, reply = await post(http, f"{r.url}/update_weights_from_disk", UPDATE)
    assert status == 502 and reply["detail"]["succeeded"] == [stubs.urls[0]]
    (failure,) = reply["detail"]["failures"]
    assert failure["status"] == 400 and json.loads(failure["detail"]) == {
        "success": False, "message": "disk full", "num_paused_requests": 0}
    async with http.put(f"{stubs.urls[1]}/_stub/behavior", json=SGLANG):
        pass
    status, reply = await post(http, f"{r.url}/update_weights_from_disk", UPDATE)
    assert status == 200, reply
    assert rows(reply)[stubs.urls[0]]["result"] == {"noop": "already at v2"}
    assert rows(reply)[stubs.urls[1]]["status"] == 200
    assert [len(await posts_to(http, url)) for url in stubs.urls] == [1, 2]


async def test_each_sglang_node_gets_its_own_rank_offset_after_the_ranks_before_it(
        stub_nodes, router, http):
    stubs = stub_nodes([SGLANG, PDFLEET, SGLANG, VLLM])
    r = router([{"url": stubs.urls[0], "role": "decode", "engine": "sglang", "ranks": 2},
                {"url": stubs.urls[1], "role": "decode"},
                {"url": stubs.urls[2], "role": "decode", "engine": "sglang", "ranks": 4},
                {"url": stubs.urls[3], "role": "prefill", "engine": "vllm"}])
    status, reply = await post(http, f"{r.url}/init_weights_update_group",
                               {**GROUP, "world_size": 8}, params=[("role", "decode")])
    assert status == 200, reply
    offsets = {url: rows(reply)[url]["rank_offset"] for url in stubs.urls[:3]}
    assert offsets == dict(zip(stubs.urls[:3], [1, 3, 4], strict=True))
    for url, offset in offsets.items():
        assert await posts_to(http, url) == [
            ("/init_weights_update_group", "", {**GROUP, "world_size": 8, "rank_offset": offset})]

    # Without the role filter the vLLM node is a target: it takes no ranks and fails.
    status, reply = await post(http, f"{r.url}/init_weights_update_group",
                               {**GROUP, "world_size": 8})
    assert status == 502
    (failure,) = reply["detail"]["failures"]
    assert failure["server"] == stubs.urls[3] and "no HTTP route" in failure["error"]
    assert "rank_offset" not in failure


@pytest.mark.parametrize("world_size", [7, 9])
async def test_a_world_size_that_does_not_fit_the_targets_ranks_is_a_400(
        stub_nodes, router, http, world_size):
    stubs = stub_nodes([SGLANG, PDFLEET])
    r = router([{"url": stubs.urls[0], "role": "decode", "engine": "sglang", "ranks": 6},
                {"url": stubs.urls[1], "role": "decode"}])
    status, reply = await post(http, f"{r.url}/init_weights_update_group",
                               {**GROUP, "world_size": world_size})
    assert status == 400
    assert reply["detail"] == (f"world_size must be rank_offset + the target nodes' ranks = "
                               f"1 + 7 = 8 (2 SGLang-speaking nodes); got {world_size}")
    assert [await posts_to(http, url) for url in stubs.urls] == [[], []]


async def test_update_from_distributed_is_sglangs_body_and_a_vllm_nodes_failure(fleet, http):
    r, (pdfleet, sglang, vllm) = fleet
    body = {"names": ["w"], "dtypes": ["bfloat16"], "shapes": [[4, 8]], "group_name": "refit",
            "weight_version": "v5"}
    status, reply = await post(http, f"{r.url}/update_weights_from_distributed", body)
    assert status == 502
    (failure,) = reply["detail"]["failures"]
    assert failure["server"] == vllm and "no HTTP route" in failure["error"]
    for url in (pdfleet, sglang):
        assert await posts_to(http, url) == [("/update_weights_from_distributed", "", body)]
    assert await posts_to(http, vllm) == []
    async with http.get(f"{sglang}/get_weight_version") as resp:
        assert await resp.json() == {"weight_version": "v5"}


async def test_fanout_sends_any_route_with_body_and_query_to_the_filtered_nodes(
        stub_nodes, router, http):
    stubs = stub_nodes([PDFLEET, PDFLEET, VLLM])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"},
                {"url": stubs.urls[2], "role": "decode", "engine": "vllm"}])
    raw = b'{"lora_name": "a",  "lora_path": "/loras/a"}'
    status, reply = await post(
        http, f"{r.url}/fanout/load_lora_adapter", raw=raw,
        params=[("engine", "sglang"), ("role", "decode"), ("pinned", "1"), ("pinned", "2"),
                ("timeout", "5")])
    assert status == 200 and reply["total"] == 1, reply
    assert (reply["operation"], reply["path"]) == ("fanout", "load_lora_adapter")
    async with http.get(f"{stubs.urls[1]}/_stub/requests") as resp:
        (seen,) = await resp.json()
    assert (seen["path"], seen["query"], seen["body"].encode()) == (
        "/load_lora_adapter", "pinned=1&pinned=2", raw)
    assert seen["headers"]["x-request-id"] == reply["request_id"]
    assert await posts_to(http, stubs.urls[0]) == await posts_to(http, stubs.urls[2]) == []

    # A vLLM server has no such route: its 404 is its failure.
    status, reply = await post(http, f"{r.url}/fanout/v1/load_lora_adapter",
                               {"lora_name": "a"}, params=[("engine", "vllm")])
    assert status == 502
    assert reply["detail"]["message"] == "fanout /v1/load_lora_adapter failed on 1/1 nodes"
    assert reply["detail"]["failures"][0]["status"] == 404
    assert await posts_to(http, stubs.urls[2]) == [
        ("/v1/load_lora_adapter", "", {"lora_name": "a"})]


@pytest.mark.parametrize("path", [
    "generate", "v1/chat/completions", "v1/completions", "v1/models", "cluster/status",
    "cluster/anything", "workers", "metrics", "dashboard", "health", "is_sleeping",
    "release_memory_occupation", "resume_memory_occupation", "flush_cache", "sleep",
    "wake_up", "pause_generation", "pause", "continue_generation", "resume",
    "update_weights_from_disk", "init_weights_update_group", "update_weights_from_distributed",
    "fanout/x", "openapi.json",
])
async def test_fanout_refuses_the_routers_own_routes_and_calls_no_node(fleet, http, path):
    r, urls = fleet
    status, reply = await post(http, f"{r.url}/fanout/{path}", {})
    assert status == 400 and "the router serves it" in reply["detail"], reply
    assert [await posts_to(http, url) for url in urls] == [[], [], []]


@pytest.mark.parametrize("path", ["a%0Ab", "%12x", "x%7Fy", "caf%C3%A9"])
async def test_fanout_refuses_a_path_that_names_no_node_route(fleet, http, path):
    r, urls = fleet
    status, reply = await post(http, f"{r.url}/fanout/{path}", {})
    assert status == 422 and "path.path: String should match pattern" in reply["detail"], reply
    assert [await posts_to(http, url) for url in urls] == [[], [], []]


@pytest.mark.parametrize(("route", "raw", "params", "message"), [
    ("/update_weights_from_disk", b"[1]", [], "request body must be a JSON object"),
    ("/update_weights_from_disk", b"", [], "missing field 'model_path'"),
    ("/update_weights_from_disk", b'{"model_path": 7}', [],
     "field 'model_path': Input should be a valid string, got 7"),
    ("/update_weights_from_disk", b'{"model_pth": "/c"}', [],
     "unknown field 'model_pth' (did you mean 'model_path'?)"),
    ("/update_weights_from_disk", b'{"model_path": "/c"}', [("force", "yes")],
     "force must be true or false; got 'yes'"),
    ("/pause_generation", b'{"mode": "later"}', [],
     "mode must be one of abort, retract, in_place; got 'later'"),
    ("/pause", b"", [("mode", "in_place")],
     "mode must be one of abort, wait, keep; got 'in_place'"),
    ("/pause", b'{"mode": "abort"}', [("mode", "keep")],
     "the query's mode 'keep' and the body's mode 'abort' disagree"),
    ("/pause_generation", b"", [("on_failure", "rollback")],
     "on_failure=rollback applies to release only"),
    ("/init_weights_update_group", json.dumps({**GROUP, "world_size": "8"}).encode(), [],
     "field 'world_size': Input should be a valid integer, got '8'"),
    ("/update_weights_from_distributed", b'{"names": ["w"], "dtypes": ["f32"]}', [],
     "missing field 'shapes'"),
    ("/fanout/x", b"", [("engine", "trt")], "engine must be one of sglang, vllm; got 'trt'"),
])
async def test_a_callers_mistake_is_a_400_naming_it_and_no_node_is_called(
        fleet, http, route, raw, params, message):
    r, urls = fleet
    status, reply = await post(http, r.url + route, raw=raw, params=params)
    assert (status, reply["detail"]) == (400, message)
    assert [await posts_to(http, url) for url in urls] == [[], [], []]
    async with http.get(f"{r.url}/cluster/operations") as resp:
        assert (await resp.json())["operations"] == []


async def test_an_update_while_a_sleep_runs_is_a_409(stub_nodes, router, http):
    slow = {"routes": {"/release_memory_occupation": {"delay": 3}}}
    stubs = stub_nodes([slow])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    sleep = asyncio.create_task(post(http, f"{r.url}/release_memory_occupation", {}))
    await eventually(lambda: _has_posts(http, stubs.urls[0]))
    status, reply = await post(http, f"{r.url}/update_weights_from_disk", UPDATE)
    assert status == 409 and "release_memory_occupation" in reply["detail"]
    status, reply = await post(http, f"{r.url}/fanout/load_lora_adapter", {})
    assert status == 409
    assert (await sleep)[0] == 200
    assert [path for path, _, _ in await posts_to(http, stubs.urls[0])] == [
        "/release_memory_occupation"]


async def _has_posts(http: aiohttp.ClientSession, url: str) -> bool:
    return bool(await posts_to(http, url))


async def test_a_failed_pause_names_the_node_with_its_detail_capped(stub_nodes, router, http):
    loud = {"routes": {"/pause_generation": {"status": 500, "body": "text", "size": 5000}}}
    stubs = stub_nodes([PDFLEET, loud])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"}])
    status, reply = await post(http, f"{r.url}/pause_generation", {"mode": "abort"})
    assert status == 502
    detail = reply["detail"]
    assert detail["message"] == "pause_generation failed on 1/2 nodes"
    (failure,) = detail["failures"]
    assert (failure["server"], failure["role"], failure["status"]) == (
        stubs.urls[1], "decode", 500)
    assert failure["detail"].startswith("node error") and len(failure["detail"]) <= 500


async def test_a_hung_node_fails_at_the_deadline(stub_nodes, router, http):
    hung = {"routes": {"/continue_generation": {"mode": "hang"}}}
    stubs = stub_nodes([PDFLEET, hung])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"}])
    started = time.monotonic()
    status, reply = await post(http, f"{r.url}/continue_generation", params=[("timeout", "1")])
    assert status == 502 and time.monotonic() - started < 3
    (failure,) = reply["detail"]["failures"]
    assert failure["server"] == stubs.urls[1] and failure["kind"] == "timeout"


async def test_every_refit_route_needs_the_admin_token(stub_nodes, router, http):
    stubs = stub_nodes([PDFLEET])
    r = router([{"url": stubs.urls[0], "role": "mixed"}], env={"PDFLEET_ADMIN_TOKEN": "t0k"})
    for route, body in [("/pause_generation", {}), ("/pause", None), ("/resume", None),
                        ("/continue_generation", {}), ("/update_weights_from_disk", UPDATE),
                        ("/init_weights_update_group", {**GROUP, "world_size": 2}),
                        ("/fanout/load_lora_adapter", {})]:
        status, _ = await post(http, r.url + route, body)
        assert status == 401, route
    assert await posts_to(http, stubs.urls[0]) == []
    good = {"Authorization": "Bearer t0k"}
    status, _ = await post(http, f"{r.url}/fanout/load_lora_adapter", {}, headers=good)
    assert status == 200
    (seen,) = await posts_to(http, stubs.urls[0])
    assert seen[0] == "/load_lora_adapter"


async def test_the_openapi_document_lists_the_refit_routes_with_bodies_and_errors(fleet, http):
    r, _ = fleet
    async with http.get(f"{r.url}/openapi.json") as resp:
        paths = (await resp.json())["paths"]
    for path in ("/pause_generation", "/pause", "/continue_generation", "/resume",
                 "/update_weights_from_disk", "/init_weights_update_group",
                 "/update_weights_from_distributed", "/fanout/{path}"):
        post_doc = paths[path]["post"]
        assert "application/json" in post_doc["requestBody"]["content"], path
        assert {"400", "401", "409", "502"} <= set(post_doc["responses"]), path
    update = paths["/update_weights_from_disk"]["post"]
    assert update["requestBody"]["required"] is True
    assert "model_path" in update["requestBody"]["content"]["application/json"]["schema"][
        "required"]
    assert {p["name"] for p in update["parameters"]} >= {"force", "timeout", "role"}
    assert {p["name"] for p in paths["/pause"]["post"]["parameters"]} >= {"mode", "clear_cache"}
    assert {p["name"] for p in paths["/fanout/{path}"]["post"]["parameters"]} >= {
        "path", "engine", "role"}
