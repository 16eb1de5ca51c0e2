"""Weight versions as fleet state, through a real router over stub nodes: each node's version
polled and shown, the fleet's version, traffic only to nodes at it (`version_policy:
latest`), PD pairs never split across versions (`any` too), the 503 naming stale nodes, and
the version header on every generation reply.

The stubs take new weights behind the router (their own update route) and polls find them, as
after an update made by a trainer or through another router;
`test_an_update_that_failed_on_some_nodes_*` makes the update through this router's route.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest

from pdfleet.vocabulary import WEIGHT_VERSION_HEADER
from tests.procs import ROOT, Router, eventually
from tests.router.pd_support import calls, pd_fleet

pytestmark = pytest.mark.timeout(90)

GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 3}}
ROUTES = {"/generate": GENERATE,
          "/v1/completions": {"model": "stub-model", "prompt": "hi", "max_tokens": 3},
          "/v1/chat/completions": {"model": "stub-model", "max_tokens": 3,
                                   "messages": [{"role": "user", "content": "hi"}]}}
REQUESTS = 12  # enough for round robin to reach every eligible node several times


async def status(http: aiohttp.ClientSession, router_url: str) -> dict[str, Any]:
    async with http.get(f"{router_url}/cluster/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def update_directly(http: aiohttp.ClientSession, stub_url: str, version: str) -> None:
    """Update the node's weights itself, as a trainer or another router would."""
    async with http.post(f"{stub_url}/update_weights_from_distributed",
                         json={"names": [], "dtypes": [], "shapes": [], "group_name": "g",
                               "weight_version": version}) as resp:
        assert resp.status == 200
        reply = await resp.json()
    assert reply["success"] is True and reply["weight_version"] == version


async def fleet_at(http: aiohttp.ClientSession, router_url: str, fleet_version: str | None,
                   nodes: dict[str, str | None]) -> dict[str, Any]:
    """The router's status once it says the fleet is at `fleet_version` and each of `nodes`
    at its version (polls are asynchronous)."""

    async def agrees() -> bool:
        view = await status(http, router_url)
        versions = {n["server"]: n["weight_version"] for n in view["nodes"]}
        return view["weight_version"] == fleet_version and all(
            versions[url] == version for url, version in nodes.items())

    await eventually(agrees)
    return await status(http, router_url)


async def generate(http: aiohttp.ClientSession, router_url: str, path: str = "/generate",
                   **extra: Any) -> tuple[int, Mapping[str, str], bytes]:
    """Status, headers (names in any case) and body of one generation request."""
    async with http.post(f"{router_url}{path}", json={**ROUTES[path], **extra}) as resp:
        return resp.status, resp.headers, await resp.read()


async def served(http: aiohttp.ClientSession, stub_urls: list[str]) -> Counter[str]:
    """How many generation requests each stub received."""
    return Counter({url: sum(c["path"] in ROUTES for c in await calls(http, url))
                    for url in stub_urls})


async def test_each_nodes_version_is_polled_and_shown_with_the_fleets(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {"weight_version": "v0"}])
    prefill, decode, mixed = stubs.urls
    r = router(pd_fleet([prefill], [decode], (mixed,)))
    view = await fleet_at(http, r.url, "default", {prefill: "default", decode: "default",
                                                   mixed: "v0"})
    assert view["version_policy"] == "latest" and view["summary"]["stale"] == 1
    stale = {n["server"]: n["stale"] for n in view["nodes"]}
    assert stale == {prefill: False, decode: False, mixed: True}
    async with http.get(f"{r.url}/get_weight_version") as resp:
        assert resp.status == 200
        assert await resp.json() == {"weight_version": "default", "nodes": [
            {"server": prefill, "weight_version": "default", "stale": False},
            {"server": decode, "weight_version": "default", "stale": False},
            {"server": mixed, "weight_version": "v0", "stale": True}]}
    async with http.get(f"{r.url}/openapi.json") as resp:
        documented = (await resp.json())["paths"]["/get_weight_version"]["get"]
    assert "200" in documented["responses"]


async def test_traffic_goes_only_to_nodes_at_the_fleets_version_until_the_rest_catch_up(
        stub_nodes, router, http):
    stubs = stub_nodes([{}, {}, {}, {}, {}])
    p1, p2, d1, d2, d3 = stubs.urls
    r = router(pd_fleet([p1, p2], [d1, d2, d3]))
    for url in (p1, d1, d2):
        await update_directly(http, url, "v2")
    await fleet_at(http, r.url, "v2", {p1: "v2", p2: "default", d1: "v2", d3: "default"})
    for _ in range(REQUESTS):
        code, headers, _ = await generate(http, r.url)
        assert code == 200 and headers[WEIGHT_VERSION_HEADER] == "v2"
    assert await served(http, stubs.urls) == Counter({p1: REQUESTS, d1: REQUESTS // 2,
                                                      d2: REQUESTS // 2})

    for url in (p2, d3):  # the stragglers come level: back in service at the next poll
        await update_directly(http, url, "v2")
    await fleet_at(http, r.url, "v2", {p2: "v2", d3: "v2"})
    for _ in range(REQUESTS):
        assert (await generate(http, r.url))[0] == 200
    assert all(count > 0 for count in (await served(http, [p2, d3])).values())


async def test_a_pd_pair_is_never_split_across_versions_even_under_any(stub_nodes, router, http):
    stubs = stub_nodes([{"weight_version": "v1"}, {"weight_version": "v2"},
                        {"weight_version": "v1"}, {"weight_version": "v2"},
                        {"weight_version": "v3"}])
    p1, p2, d1, d2, d3 = stubs.urls
    version = {p1: "v1", p2: "v2", d1: "v1", d2: "v2", d3: "v3"}
    r = router(pd_fleet([p1, p2], [d1, d2, d3]), version_policy="any")
    await fleet_at(http, r.url, "v2", version)  # a tie of v1 and v2: the later one
    for _ in range(REQUESTS):
        code, headers, body = await generate(http, r.url)
        assert code == 200
        assert headers[WEIGHT_VERSION_HEADER] == version[
            f"http://127.0.0.1:{json.loads(body)['served_by']}"]
    rooms = {url: {c["json"]["bootstrap_room"] for c in await calls(http, url)}
             for url in stubs.urls}
    assert rooms[p1] == rooms[d1] and rooms[p2] == rooms[d2]  # each pair of one version
    assert rooms[d1] and rooms[d2] and not rooms[d3]  # every version that pairs serves


async def test_a_node_added_to_a_fleet_with_a_version_serves_once_found_at_it(
        stub_nodes, router, http):
    stubs = stub_nodes([{"weight_version": "v2"}, {"weight_version": "v2"},
                        {"weight_version": "v1"}])
    first, added, behind = stubs.urls
    r = router([{"url": first, "role": "mixed"}], poll_interval_s=3600)  # no second round
    await fleet_at(http, r.url, "v2", {first: "v2"})
    for url in (added, behind):
        async with http.post(f"{r.url}/workers", json={"url": url, "role": "mixed"}) as resp:
            assert resp.status == 201
    await fleet_at(http, r.url, "v2", {added: "v2", behind: "v1"})
    for _ in range(REQUESTS):
        assert (await generate(http, r.url))[0] == 200
    assert await served(http, stubs.urls) == Counter({first: REQUESTS // 2,
                                                      added: REQUESTS // 2})


@pytest.mark.parametrize("stream", [False, True])
async def test_no_pair_at_the_fleets_version_is_a_503_naming_the_stale_nodes(
        stub_nodes, router, http, stream):
    stubs = stub_nodes([{"weight_version": "v2"}, {"weight_version": "v2"},
                        {"weight_version": "v1"}])
    p1, p2, d1 = stubs.urls
    r = router(pd_fleet([p1, p2], [d1]))
    await fleet_at(http, r.url, "v2", {p1: "v2", p2: "v2", d1: "v1"})
    code, headers, body = await generate(http, r.url, stream=stream)
    assert code == 503 and int(headers["Retry-After"]) >= 1
    error = json.loads(body)["error"]
    assert error["code"] == 503 and error["type"] == "ServiceUnavailableError"
    assert f"{d1} ('v1')" in error["message"] and "'v2'" in error["message"]
    assert p1 not in error["message"] and WEIGHT_VERSION_HEADER not in headers
    assert await served(http, stubs.urls) == Counter()


async def test_two_versions_apart_under_any_is_a_503_naming_both(stub_nodes, router, http):
    stubs = stub_nodes([{"weight_version": "v1"}, {"weight_version": "v2"}])
    prefill, decode = stubs.urls
    r = router(pd_fleet([prefill], [decode]), version_policy="any")
    await fleet_at(http, r.url, "v2", {prefill: "v1", decode: "v2"})
    code, _, body = await generate(http, r.url)
    assert code == 503
    message = json.loads(body)["error"]["message"]
    assert f"{prefill} ('v1')" in message and f"{decode} ('v2')" in message


async def test_every_generation_reply_names_the_version_that_served_it(
        stub_nodes, router, http):
    stubs = stub_nodes([{"weight_version": "v5"}, {"weight_version": "v5"},
                        {"weight_version": "v7", "version_header": False}])
    prefill, decode, mixed = stubs.urls
    pd = router(pd_fleet([prefill], [decode]))
    # A node that sends no such header (as SGLang): the version the router knows of it.
    alone = router([{"url": mixed, "role": "mixed"}])
    await fleet_at(http, pd.url, "v5", {prefill: "v5", decode: "v5"})
    await fleet_at(http, alone.url, "v7", {mixed: "v7"})
    for path in ROUTES:
        for stream in (False, True):
            for r, version in ((pd, "v5"), (alone, "v7")):
                code, headers, body = await generate(http, r.url, path, stream=stream)
                assert code == 200, (path, stream, body)
                assert headers[WEIGHT_VERSION_HEADER] == version, (path, stream)
    code, _, body = await generate(http, pd.url)
    assert json.loads(body)["meta_info"]["weight_version"] == "v5"  # the node's own, relayed


async def test_a_version_that_is_no_header_value_is_sent_percent_encoded_or_not_at_all(
        stub_nodes, router, http):
    stubs = stub_nodes([{"weight_version": "v1\r\nX-Injected: 1", "version_header": False},
                        {"weight_version": None}])
    odd, none = stubs.urls
    r = router([{"url": odd, "role": "mixed"}])
    await fleet_at(http, r.url, "v1\r\nX-Injected: 1", {odd: "v1\r\nX-Injected: 1"})
    code, headers, _ = await generate(http, r.url)
    assert code == 200 and "X-Injected" not in headers
    assert headers[WEIGHT_VERSION_HEADER] == "v1%0D%0AX-Injected: 1"
    r = router([{"url": none, "role": "mixed"}])
    await fleet_at(http, r.url, None, {none: None})
    code, headers, _ = await generate(http, r.url)
    assert code == 200 and WEIGHT_VERSION_HEADER not in headers


async def test_pdfleet_status_prints_each_nodes_version_and_marks_the_stale(
        stub_nodes, router, http):
    stubs = stub_nodes([{"weight_version": "v2"}, {"weight_version": "v2"},
                        {"weight_version": "v1"}])
    r = router([{"url": u, "role": "mixed"} for u in stubs.urls])
    await fleet_at(http, r.url, "v2", dict(zip(stubs.urls, ("v2", "v2", "v1"), strict=True)))
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pdfleet", "status", "--router", r.url],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
        env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr
    assert "1 stale" in done.stdout
    assert "weight version 'v2' (latest)" in done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines()
            if line.strip().startswith("127.0.0.1")}
    current, _, stale = (rows[u.removeprefix("http://")] for u in stubs.urls)
    assert " v2 " in current and "stale" not in current
    assert " v1 stale " in stale


async def update_route(http: aiohttp.ClientSession, router_url: str) -> None:
    """Skip where this router has no weight-update route to drive."""
    async with http.get(f"{router_url}/openapi.json") as resp:
        if "/update_weights_from_disk" not in (await resp.json())["paths"]:
            pytest.skip("this router has no POST /update_weights_from_disk")


async def from_every_worker(router_url: str, workers: int) -> dict[int, dict[str, Any]]:
    """One /cluster/status from each worker process, told apart by `X-Pdfleet-Worker`
    (bounded: the kernel picks the worker of each fresh connection)."""
    views: dict[int, dict[str, Any]] = {}
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as fresh:
        for _ in range(500):
            async with fresh.get(f"{router_url}/cluster/status") as resp:
                views[int(resp.headers["X-Pdfleet-Worker"])] = await resp.json()
            if len(views) == workers:
                return views
    raise AssertionError(f"only workers {sorted(views)} answered")


async def test_an_update_that_failed_on_some_nodes_sets_every_workers_and_replicas_version(
        stub_nodes, router, http, tmp_path):
    failing = {"routes": {"/update_weights_from_disk": {"status": 400, "body": "json"}}}
    stubs = stub_nodes([{}, {}, failing])
    prefill, decode, straggler = stubs.urls
    nodes = pd_fleet([prefill], [decode, straggler])
    r = router(nodes, workers=2, poll_interval_s=3600)  # what workers learn, they learn so
    await update_route(http, r.url)
    async with http.post(f"{r.url}/update_weights_from_disk",
                         json={"model_path": str(tmp_path / "w.safetensors"),
                               "weight_version": "v2"}) as resp:
        assert resp.status == 502
    for view in (await from_every_worker(r.url, 2)).values():
        assert view["weight_version"] == "v2"
        assert {n["server"]: n["stale"] for n in view["nodes"]} == {
            prefill: False, decode: False, straggler: True}
    for _ in range(REQUESTS):
        code, headers, _ = await generate(http, r.url)
        assert code == 200 and headers[WEIGHT_VERSION_HEADER] == "v2"
    assert await served(http, [straggler]) == Counter()
    # A replica that made no update takes the version most nodes report.
    replica = Router(tmp_path, nodes)
    try:
        view = await fleet_at(http, replica.url, "v2", {straggler: "default"})
        assert [n["server"] for n in view["nodes"] if n["stale"]] == [straggler]
    finally:
        replica.stop()
