"""`GET /cluster/operations`: the last 50 control operations, each with per-node
start and end offsets, outcome, status or error and the failure's kind."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.observability.scrape import scrape
from tests.procs import Router, closed_port

pytestmark = pytest.mark.timeout(60)


async def operations(http: aiohttp.ClientSession, r: Router) -> list[dict[str, Any]]:
    async with http.get(f"{r.url}/cluster/operations") as resp:
        assert resp.status == 200
        return (await resp.json())["operations"]


async def test_each_node_has_offsets_outcome_and_failure_kind(
    stub_nodes: Callable[..., Any], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    stubs = stub_nodes([
        {"delay": 0.3},
        {"status": 500, "body": "text"},
        {"mode": "reset"},
        {"mode": "hang"},
    ])
    slow, failing, resetting, hanging = stubs.urls
    refused = f"http://127.0.0.1:{closed_port()}"
    r = router([{"url": u, "role": "mixed"}
                for u in (slow, failing, resetting, hanging, refused)])
    async with http.post(f"{r.url}/release_memory_occupation?timeout=1.5",
                         json={"tags": ["kv_cache"]}) as resp:
        assert resp.status == 502
        failures = {f["server"]: f for f in (await resp.json())["detail"]["failures"]}
    assert {s: f["kind"] for s, f in failures.items()} == {
        failing: "http", resetting: "reset", hanging: "timeout", refused: "refused"}

    (op,) = await operations(http, r)
    assert op["operation"] == "release_memory_occupation"
    assert op["tags"] == ["kv_cache"]
    assert op["outcome"] == "partial"
    assert (op["total"], op["failed"]) == (5, 4)
    nodes = {n["server"]: n for n in op["nodes"]}
    for node in nodes.values():
        assert 0 <= node["started_ms"] <= node["ended_ms"] <= op["elapsed_ms"] + 1
    assert nodes[slow]["outcome"] == "success" and nodes[slow]["status"] == 200
    assert nodes[slow]["ended_ms"] - nodes[slow]["started_ms"] >= 300
    assert nodes[hanging]["ended_ms"] >= 1400  # the 1.5 s deadline, less timer slack
    assert nodes[failing]["status"] == 500 and "node error" in nodes[failing]["error"]
    assert nodes[refused]["kind"] == "refused" and nodes[refused]["status"] is None

    metrics = scrape(r.url)
    assert metrics.value("pdfleet_control_operations_total",
                         operation="release_memory_occupation", outcome="partial") == 1
    for url, kind in ((failing, "http"), (resetting, "reset"), (hanging, "timeout"),
                      (refused, "refused")):
        assert metrics.value("pdfleet_control_node_failures_total",
                             operation="release_memory_occupation", node=url, kind=kind) == 1


async def test_the_last_50_operations_are_kept_newest_first(
    stub_nodes: Callable[..., Any], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    request_ids = []
    for _ in range(52):
        async with http.post(f"{r.url}/flush_cache", json={}) as resp:
            assert resp.status == 200
            request_ids.append((await resp.json())["request_id"])
    kept = await operations(http, r)
    assert [op["request_id"] for op in kept] == request_ids[::-1][:50]
    assert all(op["outcome"] == "success" for op in kept)
