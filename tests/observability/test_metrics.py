"""`/metrics` on the router and on the node after real traffic and a sleep/wake through the
router: the series exist and the values that must have moved did."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.observability.conftest import RealNode
from tests.observability.scrape import scrape
from tests.procs import ROOT, Router, eventually

pytestmark = pytest.mark.timeout(120)

GENERATE = {"text": "metrics", "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
BOTH = {"tags": ["weights", "kv_cache"]}


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with http.post(url, json=body) as resp:
        await resp.read()
        return resp.status


async def test_router_metrics_count_requests_and_control_and_show_sleep_state(
    pd_nodes: list[RealNode], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    r = router([n.spec() for n in pd_nodes])
    before = scrape(r.url)
    for _ in range(2):
        assert await post(http, f"{r.url}/generate", GENERATE) == 200
    async with http.get(f"{r.url}/cluster/status") as resp:
        assert resp.status == 200
    async with http.get(f"{r.url}/generate") as resp:
        assert resp.status == 405
    async with http.get(f"{r.url}/no/such/route") as resp:
        assert resp.status == 404
    assert await post(http, f"{r.url}/release_memory_occupation", BOTH) == 200
    asleep = scrape(r.url)
    assert await post(http, f"{r.url}/resume_memory_occupation", BOTH) == 200
    after = scrape(r.url)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("pdfleet_router_requests_total", route="/generate", status="200") == 2
    # the two generations and the GET answered 405
    assert moved("pdfleet_router_request_duration_seconds_count", route="/generate") == 3
    assert moved("pdfleet_router_requests_total", route="/cluster/status", status="200") == 1
    assert moved("pdfleet_router_requests_total", route="/generate", status="405") == 1
    assert moved("pdfleet_router_requests_total", route="other", status="404") == 1
    assert moved("pdfleet_control_operations_total",
                 operation="release_memory_occupation", outcome="success") == 1
    assert moved("pdfleet_control_operations_total",
                 operation="resume_memory_occupation", outcome="success") == 1
    assert moved("pdfleet_control_operation_duration_seconds_count",
                 operation="resume_memory_occupation") == 1
    for node in pd_nodes:
        assert after.value("pdfleet_node_up", node=node.url, role=node.role) == 1
        assert asleep.value("pdfleet_node_sleeping", node=node.url, role=node.role) == 1
        assert asleep.value("pdfleet_node_released", node=node.url, tag="weights") == 1
        assert asleep.value("pdfleet_node_released", node=node.url, tag="cuda_graph") == 0
        assert after.value("pdfleet_node_sleeping", node=node.url, role=node.role) == 0
        assert after.value("pdfleet_node_released", node=node.url, tag="weights") == 0
        assert after.value("pdfleet_node_memory_used_bytes", node=node.url) > 0
        assert after.value("pdfleet_node_memory_total_bytes", node=node.url) > 0
        assert after.has("pdfleet_node_outstanding_requests", node=node.url)
    assert after.value("pdfleet_control_node_failures_total") == 0


async def test_node_metrics_count_generation_tokens_and_memory_operations(
    pd_nodes: list[RealNode], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    r = router([n.spec() for n in pd_nodes])
    decode = next(n for n in pd_nodes if n.role == "decode")
    before = scrape(decode.url)
    assert await post(http, f"{r.url}/generate", GENERATE) == 200
    assert await post(http, f"{decode.url}/generate", {"text": "no bootstrap"}) == 400
    assert await post(http, f"{r.url}/release_memory_occupation", BOTH) == 200
    asleep = scrape(decode.url)
    assert await post(http, f"{r.url}/resume_memory_occupation", {"tags": None}) == 200
    after = scrape(decode.url)

    def moved(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("pdfleet_node_generate_requests_total", route="/generate", status="200") == 1
    assert moved("pdfleet_node_generate_requests_total", route="/generate", status="400") == 1
    assert moved("pdfleet_node_generated_tokens_total") == 4
    assert moved("pdfleet_node_memory_operations_total", operation="release",
                 outcome="success") == 1
    assert moved("pdfleet_node_memory_operations_total", operation="resume",
                 outcome="success") == 1
    for tag in ("weights", "kv_cache"):
        assert moved("pdfleet_node_memory_operation_duration_seconds_count",
                     operation="release", tag=tag) == 1
        assert moved("pdfleet_node_memory_operation_duration_seconds_count",
                     operation="resume", tag=tag) == 1
        assert asleep.value("pdfleet_node_released_tags", tag=tag) == 1
        assert asleep.value("pdfleet_node_region_bytes", tag=tag, state="released") > 0
        assert asleep.value("pdfleet_node_region_bytes", tag=tag, state="resident") == 0
        assert after.value("pdfleet_node_released_tags", tag=tag) == 0
        assert after.value("pdfleet_node_region_bytes", tag=tag, state="resident") > 0
    assert after.value("pdfleet_node_inflight_requests") == 0


async def test_a_removed_worker_has_no_series(
    stub_nodes: Callable[..., Any], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    stubs = stub_nodes([{}, {}])
    kept, removed = stubs.urls
    r = router([{"url": kept, "role": "prefill"}, {"url": removed, "role": "decode"}])
    assert await post(http, f"{r.url}/release_memory_occupation", {}) == 200
    assert removed in scrape(r.url).label_values("node")
    async with http.delete(f"{r.url}/workers", params={"url": removed}) as resp:
        assert resp.status == 200
    nodes = scrape(r.url).label_values("node")
    assert removed not in nodes
    assert kept in nodes


async def test_status_agrees_with_itself_right_after_a_partial_wake(
    pd_nodes: list[RealNode], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    # Polls too rare to help: only the refresh after each operation can make status right.
    r = router([n.spec() for n in pd_nodes], poll_interval_s=60)

    async def polled_once() -> bool:
        async with http.get(f"{r.url}/cluster/status") as resp:
            return all(n["checked_at"] is not None for n in (await resp.json())["nodes"])

    await eventually(polled_once, within_s=20)
    assert await post(http, f"{r.url}/release_memory_occupation", BOTH) == 200
    assert await post(http, f"{r.url}/resume_memory_occupation", {"tags": ["weights"]}) == 200
    async with http.get(f"{r.url}/cluster/status") as resp:
        status = await resp.json()
    for view in status["nodes"]:
        regions = view["memory"]["regions"]
        assert view["released_tags"] == ["kv_cache"], view
        assert regions["weights"]["state"] == "resident", view
        assert regions["kv_cache"]["state"] == "released", view
        async with http.get(f"{view['server']}/get_server_info") as resp:
            direct = (await resp.json())["memory"]
        assert view["memory"]["regions"] == direct["regions"]
    assert await post(http, f"{r.url}/resume_memory_occupation", {"tags": None}) == 200


async def test_nodes_whose_reply_does_not_say_their_memory_are_polled_again_at_once(
    stub_nodes: Callable[..., Any], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    # The stub's release reply carries no memory (as SGLang's); its status route shows 0 bytes
    # used once released. Polls are too rare to help: only the refresh can show that.
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}], poll_interval_s=60)

    async def used_bytes(expected: int) -> bool:
        async with http.get(f"{r.url}/cluster/status") as resp:
            (view,) = (await resp.json())["nodes"]
        return isinstance(view["memory"], dict) and view["memory"]["used_bytes"] == expected

    await eventually(lambda: used_bytes(1 << 30), within_s=10)
    assert await post(http, f"{r.url}/release_memory_occupation", BOTH) == 200
    await eventually(lambda: used_bytes(0), within_s=5)


async def test_the_grafana_dashboard_queries_only_series_we_export(
    pd_nodes: list[RealNode], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    r = router([n.spec() for n in pd_nodes])
    assert await post(http, f"{r.url}/generate", GENERATE) == 200
    assert await post(http, f"{r.url}/release_memory_occupation", BOTH) == 200
    assert await post(http, f"{r.url}/resume_memory_occupation", BOTH) == 200
    exported = {name for url in (r.url, pd_nodes[0].url) for name in scrape(url).declared}
    dashboard = (ROOT / "configs" / "grafana" / "pdfleet.json").read_text()
    queried = set(re.findall(r"pdfleet_[a-z_]+", dashboard)) - {"pdfleet_fleet"}
    assert queried and queried <= exported, queried - exported


async def test_with_a_multiprocess_dir_counters_live_in_it_and_scrape_from_it(
    stub_nodes: Callable[..., Any], router: Callable[..., Router], http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}],
               env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert await post(http, f"{r.url}/flush_cache", {}) == 200
    metrics = scrape(r.url)
    assert metrics.value("pdfleet_control_operations_total",
                         operation="flush_cache", outcome="success") == 1
    assert metrics.value("pdfleet_node_up", node=stubs.urls[0], role="mixed") == 1
    assert any(shared.glob("counter_*.db")) and any(shared.glob("histogram_*.db"))


async def test_each_nodes_weight_version_and_the_stale_ones_are_exported(
    stub_nodes: Callable[..., Any], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    stubs = stub_nodes([{"weight_version": "v2"}, {"weight_version": "v2"},
                        {"weight_version": "v1"}, {"weight_version": None}])
    prefill, decode, mixed, unnamed = stubs.urls
    r = router([{"url": prefill, "role": "prefill"}, {"url": decode, "role": "decode"},
                {"url": mixed, "role": "mixed"}, {"url": unnamed, "role": "mixed"}])

    async def polled() -> bool:
        return scrape(r.url).value("pdfleet_node_stale", node=unnamed, role="mixed") == 1

    await eventually(polled)
    metrics = scrape(r.url)
    for node, version in ((prefill, "v2"), (decode, "v2"), (mixed, "v1")):
        assert metrics.value("pdfleet_node_weight_version_info", node=node,
                             version=version) == 1
    assert not metrics.has("pdfleet_node_weight_version_info", node=unnamed)
    assert metrics.value("pdfleet_node_stale", node=prefill, role="prefill") == 0
    assert metrics.value("pdfleet_node_stale", node=mixed, role="mixed") == 1
    assert metrics.value("pdfleet_fleet_weight_versions") == 2
    assert metrics.value("pdfleet_fleet_weight_version_info", version="v2") == 1

    # The stale node asleep: no longer routable, so one version among the routable nodes.
    assert await post(http, f"{r.url}/release_memory_occupation?role=mixed", {}) == 200
    assert scrape(r.url).value("pdfleet_fleet_weight_versions") == 1
