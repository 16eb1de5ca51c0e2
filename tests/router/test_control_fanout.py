"""The router's cluster control fan-out, against real stub node processes."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import psutil
import pytest

from tests.procs import closed_port, eventually

pytestmark = pytest.mark.timeout(60)

RELEASE = "/release_memory_occupation"


def nodes_of(urls: list[str], roles: list[str] | None = None) -> list[dict[str, Any]]:
    roles = roles or ["prefill", "decode"] * len(urls)
    return [{"url": u, "role": r} for u, r in zip(urls, roles, strict=False)]


async def post(http: aiohttp.ClientSession, url: str, body: Any = None, *,
               raw: bytes | None = None, headers: dict[str, str] | None = None
               ) -> tuple[int, Any, float]:
    started = time.monotonic()
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    async with http.post(url, data=data, headers=hdrs) as resp:
        payload = await resp.json(content_type=None)
        return resp.status, payload, time.monotonic() - started


async def received(http: aiohttp.ClientSession, stub_url: str) -> list[dict[str, Any]]:
    async with http.get(f"{stub_url}/_stub/requests") as resp:
        return await resp.json()


async def has_received(http: aiohttp.ClientSession, stub_url: str) -> bool:
    return bool(await received(http, stub_url))


async def test_all_nodes_ok_gives_200_report_with_each_node_result(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}, {}])
    r = router(nodes_of(stubs.urls))
    status, body, _ = await post(http, r.url + RELEASE, {"tags": ["weights"]})
    assert status == 200
    assert body["success"] is True and body["operation"] == "release_memory_occupation"
    assert (body["total"], body["succeeded"], body["failed"]) == (4, 4, 0)
    assert {n["server"] for n in body["nodes"]} == set(stubs.urls)
    for node in body["nodes"]:
        assert node["status"] == 200 and node["result"]["released_tags"] == ["weights"]
        assert node["role"] in ("prefill", "decode") and node["elapsed_ms"] >= 0


async def test_body_is_forwarded_verbatim_with_one_request_id(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router(nodes_of(stubs.urls))
    raw = b'{"tags": null,   "extra_field": {"keep": [1, 2]}, "flush": true}'
    status, body, _ = await post(http, r.url + RELEASE, raw=raw,
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    assert status == 200
    seen = [(await received(http, u))[-1] for u in stubs.urls]
    assert [s["body"].encode("latin-1") for s in seen] == [raw, raw]
    assert {s["headers"]["content-type"] for s in seen} == {"application/json; charset=utf-8"}
    request_ids = {s["headers"]["x-request-id"] for s in seen}
    assert len(request_ids) == 1 and body["request_id"] in request_ids
    assert all(s["path"] == RELEASE for s in seen)


async def test_sglang_bodies_and_aliases_reach_nodes_as_sglang_routes(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router(nodes_of(stubs.urls))
    for path, body, node_path in [
        ("/sleep", {}, RELEASE),
        ("/wake_up", {"tags": None}, "/resume_memory_occupation"),
        ("/release_memory_occupation", {"tags": ["weights"]}, RELEASE),
        ("/flush_cache", {}, "/flush_cache"),
    ]:
        status, _, _ = await post(http, r.url + path, body)
        assert status == 200
        last = (await received(http, stubs.urls[0]))[-1]
        assert last["path"] == node_path and json.loads(last["body"]) == body


async def test_text_500_and_json_503_are_reported_with_status_and_detail(stub_nodes, router, http):
    stubs = stub_nodes([{"status": 500, "body": "text"}, {"status": 503, "body": "json"}, {}])
    r = router(nodes_of(stubs.urls, ["prefill", "decode", "decode"]))
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 502
    detail = body["detail"]
    assert detail["message"] == "release_memory_occupation failed on 2/3 nodes"
    assert (detail["total"], detail["failed"]) == (3, 2)
    assert detail["succeeded"] == [stubs.urls[2]]
    failures = {f["server"]: f for f in detail["failures"]}
    assert failures[stubs.urls[0]]["status"] == 500
    assert failures[stubs.urls[0]]["detail"].startswith("node error")
    assert failures[stubs.urls[0]]["role"] == "prefill"
    assert failures[stubs.urls[1]]["status"] == 503
    assert json.loads(failures[stubs.urls[1]]["detail"]) == {"error": "node failed", "code": 503}
    assert all("error" not in f for f in failures.values())


async def test_binary_error_body_is_decoded_with_replacement_and_capped(stub_nodes, router, http):
    stubs = stub_nodes([{"status": 500, "body": "binary", "size": 5000}])
    r = router(nodes_of(stubs.urls))
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 502
    detail = body["detail"]["failures"][0]["detail"]
    assert "\ufffd" in detail and len(detail) <= 500


async def test_5kb_error_body_is_capped_at_error_detail_bytes(stub_nodes, router, http):
    stubs = stub_nodes([{"status": 500, "body": "text", "size": 5000}] * 2)
    r = router(nodes_of(stubs.urls[:1]))
    _, body, _ = await post(http, r.url + RELEASE)
    assert len(body["detail"]["failures"][0]["detail"]) == 500
    small = router(nodes_of(stubs.urls[1:]), error_detail_bytes=64)
    _, body, _ = await post(http, small.url + RELEASE)
    assert len(body["detail"]["failures"][0]["detail"]) == 64


@pytest.mark.timeout(120)
async def test_gigabyte_error_body_neither_slows_nor_bloats_the_router(stub_nodes, router, http):
    one_gib = 1 << 30
    stubs = stub_nodes([{"status": 500, "body": "huge", "size": one_gib}])
    r = router(nodes_of(stubs.urls))
    rss_before = psutil.Process(r.process.proc.pid).memory_info().rss
    status, body, elapsed = await post(http, r.url + RELEASE)
    rss_after = psutil.Process(r.process.proc.pid).memory_info().rss
    assert status == 502
    assert len(body["detail"]["failures"][0]["detail"]) <= 500
    assert elapsed < 5
    assert rss_after - rss_before < 16 << 20


async def test_refused_connection_is_a_transport_failure_without_status(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router(nodes_of([stubs.urls[0], dead]))
    status, body, elapsed = await post(http, r.url + RELEASE)
    assert status == 502
    (failure,) = body["detail"]["failures"]
    assert failure["server"] == dead and "status" not in failure
    assert "ConnectionRefusedError" in failure["error"]
    assert elapsed < 3  # three attempts within about a second of backoff


async def test_refused_connection_is_retried_three_times_then_fails(stub_nodes, router, http):
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router(nodes_of([dead]))
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 502
    # backoff 0.25 s then 0.5 s between the three attempts
    assert 0.6 < body["detail"]["failures"][0]["elapsed_ms"] / 1000 < 2.5


async def test_refused_connection_retries_stop_before_the_deadline(stub_nodes, router, http):
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router(nodes_of([dead]))
    status, body, _ = await post(http, r.url + RELEASE + "?timeout=0.4")
    assert status == 502
    # one retry after 0.25 s fits in 0.4 s; the next, 0.5 s later, would not
    assert 0.2 < body["detail"]["failures"][0]["elapsed_ms"] / 1000 < 0.4


async def test_reset_mid_reply_is_a_transport_failure_and_is_not_retried(stub_nodes, router, http):
    stubs = stub_nodes([{"mode": "reset"}])
    r = router(nodes_of(stubs.urls))
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 502
    (failure,) = body["detail"]["failures"]
    assert "status" not in failure and failure["error"]
    assert len(await received(http, stubs.urls[0])) == 1


async def test_hung_node_is_bounded_by_query_timeout(stub_nodes, router, http):
    stubs = stub_nodes([{"mode": "hang"}, {}])
    r = router(nodes_of(stubs.urls))
    status, body, elapsed = await post(http, r.url + RELEASE + "?timeout=1")
    assert status == 502
    assert 0.9 < elapsed < 2.5
    (failure,) = body["detail"]["failures"]
    assert failure["server"] == stubs.urls[0] and failure["error"].startswith("TimeoutError")
    assert body["detail"]["succeeded"] == [stubs.urls[1]]


async def test_hung_node_is_bounded_by_configured_control_timeout(stub_nodes, router, http):
    stubs = stub_nodes([{"mode": "hang"}])
    r = router(nodes_of(stubs.urls), control_timeout_s=1.5)
    status, body, elapsed = await post(http, r.url + RELEASE)
    assert status == 502 and 1.4 < elapsed < 3
    assert body["detail"]["failures"][0]["error"].startswith("TimeoutError")


async def test_all_nodes_failing_lists_every_failure(stub_nodes, router, http):
    stubs = stub_nodes([{"status": 500}, {"status": 502, "body": "text"}])
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router(nodes_of([*stubs.urls, dead]))
    status, body, _ = await post(http, r.url + "/resume_memory_occupation")
    assert status == 502
    detail = body["detail"]
    assert detail["message"] == "resume_memory_occupation failed on 3/3 nodes"
    assert detail["succeeded"] == [] and len(detail["failures"]) == 3


async def test_empty_fleet_is_200_with_zero_total(router, http):
    r = router([])
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 200 and body["total"] == 0 and body["nodes"] == []


async def test_2xx_variants_including_204_without_body_are_success(stub_nodes, router, http):
    stubs = stub_nodes([{"status": 204}, {"status": 201, "body": "json"},
                        {"status": 200, "body": "text"}, {"status": 200, "body": "empty"}])
    r = router(nodes_of(stubs.urls))
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 200 and body["succeeded"] == 4
    results = {n["server"]: n for n in body["nodes"]}
    assert results[stubs.urls[0]]["status"] == 204 and results[stubs.urls[0]]["result"] is None
    assert results[stubs.urls[1]]["result"] == {"error": "node failed", "code": 201}
    assert results[stubs.urls[2]]["result"] is None  # not JSON
    assert results[stubs.urls[3]]["result"] is None


async def test_role_filter_narrows_targets(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}])
    r = router(nodes_of(stubs.urls, ["prefill", "decode", "decode"]))
    status, body, _ = await post(http, r.url + RELEASE + "?role=decode")
    assert status == 200 and body["total"] == 2
    assert {n["server"] for n in body["nodes"]} == set(stubs.urls[1:])
    assert await received(http, stubs.urls[0]) == []
    status, body, _ = await post(http, r.url + RELEASE + "?role=mixed")
    assert status == 200 and body["total"] == 0
    status, body, _ = await post(http, r.url + RELEASE + "?role=bogus")
    assert status == 400 and "role" in body["detail"]


@pytest.mark.timeout(90)
async def test_64_nodes_are_called_concurrently(stub_nodes, router, http):
    stubs = stub_nodes([{"delay": 0.5} for _ in range(64)])
    r = router(nodes_of(stubs.urls))
    status, body, elapsed = await post(http, r.url + RELEASE)
    assert status == 200 and body["succeeded"] == 64
    assert elapsed < 0.5 * 4  # sequential calls would take 32 s


async def test_admin_token_is_required_when_configured(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router(nodes_of(stubs.urls), env={"PDFLEET_ADMIN_TOKEN": "s3cret"})
    status, body, _ = await post(http, r.url + RELEASE)
    assert status == 401 and "token" in body["detail"]
    status, _, _ = await post(http, r.url + RELEASE, headers={"Authorization": "Bearer wrong"})
    assert status == 401
    assert await received(http, stubs.urls[0]) == []
    status, _, _ = await post(http, r.url + RELEASE, headers={"Authorization": "Bearer s3cret"})
    assert status == 200
    async with http.post(r.url + "/workers", json={"url": "http://127.0.0.1:1", "role": "decode"}
                         ) as resp:
        assert resp.status == 401
    async with http.get(r.url + "/cluster/status") as resp:
        assert resp.status == 200  # reading state needs no token


async def test_overlapping_operation_gets_409(stub_nodes, router, http):
    stubs = stub_nodes([{"delay": 2}])
    r = router(nodes_of(stubs.urls))
    first = asyncio.create_task(post(http, r.url + RELEASE))
    # the first operation is running once the node has received its call
    await eventually(lambda: has_received(http, stubs.urls[0]))
    status, body, _ = await post(http, r.url + "/resume_memory_occupation")
    assert status == 409 and "release_memory_occupation" in body["detail"]
    status, _, _ = await first
    assert status == 200


async def test_rollback_resumes_nodes_that_released(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {"status": 500, "body": "text"}])
    r = router(nodes_of(stubs.urls))
    status, body, _ = await post(http, r.url + RELEASE + "?on_failure=rollback",
                                 {"tags": ["kv_cache"]})
    assert status == 502
    rollback = {x["server"]: x for x in body["detail"]["rollback"]}
    assert set(rollback) == set(stubs.urls[:2])
    assert all(x["status"] == 200 for x in rollback.values())
    for url in stubs.urls[:2]:
        calls = await received(http, url)
        assert [c["path"] for c in calls] == [RELEASE, "/resume_memory_occupation"]
        assert json.loads(calls[1]["body"]) == {"tags": ["kv_cache"]}
    assert [c["path"] for c in await received(http, stubs.urls[2])] == [RELEASE]
    async with http.get(r.url + "/cluster/status") as resp:
        nodes = {n["server"]: n for n in (await resp.json())["nodes"]}
    assert all(nodes[u]["sleeping"] is False for u in stubs.urls[:2])


async def test_bad_json_body_is_400_and_reaches_no_node(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router(nodes_of(stubs.urls))
    for raw in (b"{not json", b"[1, 2]"):
        status, body, _ = await post(http, r.url + RELEASE, raw=raw)
        assert status == 400 and "JSON" in body["detail"]
    status, body, _ = await post(http, r.url + RELEASE + "?timeout=-1")
    assert status == 400 and "timeout" in body["detail"]
    assert await received(http, stubs.urls[0]) == []


async def test_oversized_body_is_413(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router(nodes_of(stubs.urls), max_body_bytes=4096)
    status, body, _ = await post(http, r.url + RELEASE, raw=b'{"x": "' + b"a" * 8000 + b'"}')
    assert status == 413 and "larger than" in body["detail"]
    assert await received(http, stubs.urls[0]) == []
