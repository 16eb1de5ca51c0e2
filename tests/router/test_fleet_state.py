"""Cluster status, the worker registry, the admin token and the bind rule."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from tests.procs import ROOT, closed_port, eventually

pytestmark = pytest.mark.timeout(60)


async def status_of(http: aiohttp.ClientSession, router_url: str) -> dict[str, dict[str, Any]]:
    async with http.get(f"{router_url}/cluster/status") as resp:
        assert resp.status == 200
        return {n["server"]: n for n in (await resp.json())["nodes"]}


async def wait_polled(http: aiohttp.ClientSession, router_url: str, url: str) -> dict[str, Any]:
    """Return a node's status once the background poller has checked it."""

    async def polled() -> bool:
        return (await status_of(http, router_url))[url]["checked_at"] is not None

    await eventually(polled)
    return (await status_of(http, router_url))[url]


async def test_status_shows_unreachable_node_as_unreachable(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router([{"url": stubs.urls[0], "role": "prefill"}, {"url": dead, "role": "decode"}])
    down = await wait_polled(http, r.url, dead)
    assert down["reachable"] is False and down["health"] == "down"
    assert "Connection" in down["last_error"]
    up = await wait_polled(http, r.url, stubs.urls[0])
    assert up["reachable"] is True and up["sleeping"] is False
    assert up["memory"] == {"used_bytes": 1 << 30, "total_bytes": 1 << 30}


async def test_status_shows_unknown_for_nodes_without_status_routes(stub_nodes, router, http):
    stubs = stub_nodes([{"status_routes": False}])
    r = router([{"url": stubs.urls[0], "role": "decode"}])
    node = await wait_polled(http, r.url, stubs.urls[0])
    assert node["reachable"] is True
    assert node["sleeping"] == "unknown" and node["memory"] == "unknown"
    assert node["inflight"] == "unknown"


async def test_control_results_are_recorded_at_once(stub_nodes, router, http):
    stubs = stub_nodes([{"status_routes": False}, {"status": 500, "body": "text"}])
    nodes = [{"url": stubs.urls[0], "role": "prefill"}, {"url": stubs.urls[1], "role": "decode"}]
    r = router(nodes, poll_interval_s=3600)
    async with http.post(f"{r.url}/release_memory_occupation", json={"tags": ["kv_cache"]}) as resp:
        assert resp.status == 502
    nodes = await status_of(http, r.url)
    ok, failed = nodes[stubs.urls[0]], nodes[stubs.urls[1]]
    assert ok["sleeping"] is True and ok["released_tags"] == ["kv_cache"]
    assert ok["last_op"] == "release_memory_occupation" and ok["last_error"] is None
    assert failed["last_error"].startswith("HTTP 500")
    async with http.post(f"{r.url}/resume_memory_occupation", json={"tags": None}) as resp:
        assert resp.status == 502
    nodes = await status_of(http, r.url)
    assert nodes[stubs.urls[0]]["sleeping"] is False


async def test_poll_shows_node_awake_after_it_woke_on_its_own(stub_nodes, router, http):
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "decode"}])
    async with http.post(f"{r.url}/sleep", json={}) as resp:
        assert resp.status == 200
    assert (await status_of(http, r.url))[stubs.urls[0]]["sleeping"] is True
    async with http.post(f"{stubs.urls[0]}/resume_memory_occupation", json={}) as resp:
        assert resp.status == 200  # woken behind the router's back

    async def awake() -> bool:
        return (await status_of(http, r.url))[stubs.urls[0]]["sleeping"] is False

    await eventually(awake)


async def test_workers_can_be_listed_added_and_removed(stub_nodes, router, http):
    stubs = stub_nodes([{}, {}])
    r = router([{"url": stubs.urls[0], "role": "prefill", "bootstrap_port": 8998}])
    async with http.get(f"{r.url}/workers") as resp:
        assert (await resp.json())["workers"] == [
            {"url": stubs.urls[0], "role": "prefill", "bootstrap_port": 8998,
             "engine": "sglang"}]
    new = {"url": stubs.urls[1], "role": "decode"}
    async with http.post(f"{r.url}/workers", json=new) as resp:
        assert resp.status == 201
    async with http.post(f"{r.url}/workers", json=new) as resp:
        assert resp.status == 409
    async with http.post(f"{r.url}/release_memory_occupation", json={}) as resp:
        assert (await resp.json())["total"] == 2
    async with http.delete(f"{r.url}/workers", params={"url": stubs.urls[0]}) as resp:
        assert resp.status == 200
    async with http.delete(f"{r.url}/workers", params={"url": stubs.urls[0]}) as resp:
        assert resp.status == 404
    async with http.post(f"{r.url}/release_memory_occupation", json={}) as resp:
        body = await resp.json()
    assert [n["server"] for n in body["nodes"]] == [stubs.urls[1]]


async def test_bad_worker_input_gets_a_clear_error(router, http):
    r = router([])
    for payload, status, words in [
        (b"{oops", 400, "JSON"),
        (b'{"url": "http://127.0.0.1:1", "role": "chef"}', 422, "role"),
        (b'{"url": "not a url", "role": "decode"}', 422, "url"),
        (b'{"url": "http://127.0.0.1:1", "role": "decode", "colour": 1}', 422, "colour"),
    ]:
        async with http.post(f"{r.url}/workers", data=payload) as resp:
            assert resp.status == status
            assert words in (await resp.json())["detail"]


def run_router_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pdfleet", "router", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=30, env=env,
    )


def test_non_loopback_bind_without_token_is_refused(tmp_path):
    config = tmp_path / "fleet.yaml"
    config.write_text(f"router: {{port: {closed_port()}}}\nnodes: []\n")
    env = {k: v for k, v in os.environ.items() if k != "PDFLEET_ADMIN_TOKEN"}
    done = run_router_cli("--config", str(config), "--host", "0.0.0.0", env=env)
    assert done.returncode != 0
    assert "PDFLEET_ADMIN_TOKEN" in done.stderr and "--insecure-no-auth" in done.stderr


def test_config_with_unknown_key_is_rejected_naming_it(tmp_path):
    config = tmp_path / "fleet.yaml"
    config.write_text("router:\n  port: 8000\n  polcy: random\nnodes: []\n")
    done = run_router_cli("--config", str(config))
    assert done.returncode == 2
    assert "unknown key 'router.polcy'" in done.stderr
    config.write_text("nodes:\n  - {url: 'http://127.0.0.1:1', role: decode, bootstrap_port: 0}\n")
    done = run_router_cli("--config", str(config))
    assert done.returncode == 2 and "nodes.0.bootstrap_port" in done.stderr
