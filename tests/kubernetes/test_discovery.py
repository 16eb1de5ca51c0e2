"""Kubernetes discovery against the fake API server: a real router process, real stub nodes
serving each pod's address (every pod's IP is 127.0.0.1; its `pdfleet.io/port` annotation is
a stub's port). Every wait polls the router's /cluster/status up to a deadline."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import aiohttp
import pytest

from router.discovery.kubernetes import VERBS
from tests.kubernetes.discovering_router import NAMESPACE
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.procs import ROOT, eventually

pytestmark = pytest.mark.timeout(90)
WAIT_S = 15
PREFILL = {"app": "sglang", "role": "prefill"}
DECODE = {"app": "sglang", "role": "decode"}
GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 4}}


def pod(fake: FakeApiServer, name: str, labels: dict[str, str], port: int, *,
        ready: bool = True, **annotations: str) -> None:
    fake.add_pod(name, labels, namespace=NAMESPACE, ready=ready,
                 annotations={"pdfleet.io/port": str(port), **annotations})


async def cluster(http: aiohttp.ClientSession, router: Any) -> dict[str, Any]:
    async with http.get(f"{router.url}/cluster/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def pods(http: aiohttp.ClientSession, router: Any) -> dict[str, dict[str, Any]]:
    """The router's discovered nodes, by pod name."""
    return {n["pod"]: n for n in (await cluster(http, router))["nodes"]
            if n["source"] == "kubernetes"}


async def until(http: aiohttp.ClientSession, router: Any, check: Any) -> dict[str, Any]:
    """Poll the router's discovered nodes until `check(nodes)` holds; return them."""
    seen: dict[str, Any] = {}

    async def holds() -> bool:
        seen.clear()
        seen.update(await pods(http, router))
        return bool(check(seen))

    try:
        await eventually(holds, WAIT_S)
    except TimeoutError:
        raise AssertionError(f"discovered nodes never matched; last seen {seen}") from None
    return dict(seen)


async def watches(http: aiohttp.ClientSession, router: Any) -> dict[str, dict[str, Any]]:
    return {w["role"]: w for w in (await cluster(http, router))["discovery"]["roles"]}


async def test_a_ready_pod_joins_with_its_annotations_and_serves(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}])
    router = discovering_router()
    pod(fake_api, "prefill-0", PREFILL, stubs.ports[0], ready=False,
        **{"sglang.ai/bootstrap-port": "8998"})
    pod(fake_api, "decode-0", DECODE, stubs.ports[1])
    found = await until(http, router, lambda n: "decode-0" in n)
    assert "prefill-0" not in found  # not Ready: not a node
    fake_api.set_ready("prefill-0", True, namespace=NAMESPACE)
    found = await until(http, router, lambda n: "prefill-0" in n)
    prefill, decode = found["prefill-0"], found["decode-0"]
    assert (prefill["server"], prefill["role"], prefill["bootstrap_port"]) == (
        stubs.urls[0], "prefill", 8998)
    assert (decode["server"], decode["role"], decode["engine"]) == (
        stubs.urls[1], "decode", "sglang")
    assert {prefill["phase"], decode["phase"]} == {"serving"}
    async with http.post(f"{router.url}/generate", json=GENERATE) as resp:
        assert resp.status == 200
        assert (await resp.json())["served_by"] == stubs.ports[1]


async def test_a_pod_leaves_when_not_ready_and_when_deleted(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}])
    router = discovering_router()
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    await until(http, router, lambda n: "decode-0" in n)
    fake_api.set_ready("decode-0", False, namespace=NAMESPACE)
    await until(http, router, lambda n: not n)
    fake_api.set_ready("decode-0", True, namespace=NAMESPACE)
    await until(http, router, lambda n: "decode-0" in n)
    fake_api.delete_pod("decode-0", namespace=NAMESPACE)
    await until(http, router, lambda n: not n)


async def test_a_pod_relabelled_out_of_its_selector_leaves(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}])
    router = discovering_router()
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    await until(http, router, lambda n: "decode-0" in n)
    fake_api.label("decode-0", {"role": "prefill"}, namespace=NAMESPACE)
    found = await until(http, router, lambda n: n.get("decode-0", {}).get("role") == "prefill")
    assert len(found) == 1


async def test_a_new_port_annotation_moves_the_node(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}])
    router = discovering_router()
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    await until(http, router, lambda n: n.get("decode-0", {}).get("server") == stubs.urls[0])
    fake_api.annotate("decode-0", {"pdfleet.io/port": str(stubs.ports[1])},
                      namespace=NAMESPACE)
    found = await until(
        http, router, lambda n: n.get("decode-0", {}).get("server") == stubs.urls[1])
    assert len(found) == 1


async def test_a_bad_port_annotation_is_reported_and_the_pod_skipped(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}])
    router = discovering_router()
    pod(fake_api, "decode-bad", DECODE, 0, **{"pdfleet.io/port": "http"})
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    found = await until(http, router, lambda n: "decode-0" in n)
    assert "decode-bad" not in found
    recent = (await cluster(http, router))["discovery"]["recent"]
    rejected = [e for e in recent if e["event"] == "rejected"]
    assert rejected and rejected[0]["pod"] == "decode-bad"
    assert "pdfleet.io/port must be a port" in rejected[0]["detail"]


async def test_a_deleting_pod_drains_its_in_flight_request_and_gets_no_new_one(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {"hold_last_chunk": True}, {}])
    router = discovering_router()
    pod(fake_api, "prefill-0", PREFILL, stubs.ports[0])
    pod(fake_api, "decode-0", DECODE, stubs.ports[1])
    await until(http, router, lambda n: len(n) == 2)
    async with http.post(f"{router.url}/generate", json={**GENERATE, "stream": True}) as held:
        assert held.status == 200
        await held.content.readline()  # decode-0 has the request in flight
        pod(fake_api, "decode-1", DECODE, stubs.ports[2])
        fake_api.start_deleting("decode-0", namespace=NAMESPACE)
        found = await until(http, router, lambda n: n.get("decode-0", {}).get("draining")
                            and n.get("decode-1", {}).get("phase") == "serving")
        assert found["decode-0"]["phase"] == "draining"
        for _ in range(4):
            async with http.post(f"{router.url}/generate", json=GENERATE) as resp:
                assert (await resp.json())["served_by"] == stubs.ports[2]
        async with http.post(f"{stubs.urls[1]}/_stub/release") as released:
            assert released.status == 200
        rest = await held.read()
        assert rest.rstrip().endswith(b"data: [DONE]")
    fake_api.delete_pod("decode-0", namespace=NAMESPACE)
    await until(http, router, lambda n: "decode-0" not in n)


async def test_delete_workers_refuses_a_discovered_node_and_static_nodes_stay(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}])
    router = discovering_router(nodes=[{"url": stubs.urls[0], "role": "prefill"}])
    pod(fake_api, "decode-0", DECODE, stubs.ports[1])
    await until(http, router, lambda n: "decode-0" in n)
    async with http.delete(f"{router.url}/workers", params={"url": stubs.urls[1]}) as resp:
        assert resp.status == 409
        assert "decode-0" in (await resp.json())["detail"]
    nodes = {n["server"]: n for n in (await cluster(http, router))["nodes"]}
    assert nodes[stubs.urls[0]]["source"] == "static"
    async with http.delete(f"{router.url}/workers", params={"url": stubs.urls[0]}) as resp:
        assert resp.status == 200
    assert list(await pods(http, router)) == ["decode-0"]


async def test_a_cut_watch_is_an_error_and_a_new_list_catches_up(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}])
    router = discovering_router()
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    await until(http, router, lambda n: "decode-0" in n)
    lists = fake_api.lists
    fake_api.cut_watches()
    pod(fake_api, "decode-1", DECODE, stubs.ports[1])
    await until(http, router, lambda n: "decode-1" in n)
    decode = (await watches(http, router))["decode"]
    assert decode["errors"] >= 1 and decode["last_error"]
    assert fake_api.lists > lists
    # the verbs the router's Role grants (tests/kubernetes/test_manifests.py) are these
    assert fake_api.verbs_seen == set(VERBS)


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["error_event", "http_410"])
async def test_a_410_gone_watch_lists_again_without_an_error(
        gone_as_http, discovering_router, stub_nodes, http):
    fake = await FakeApiServer(gone_as_http=gone_as_http).start()
    try:
        stubs = stub_nodes([{}, {}])
        router = discovering_router(api=fake)
        pod(fake, "decode-0", DECODE, stubs.ports[0])
        await until(http, router, lambda n: "decode-0" in n)
        lists = fake.lists
        fake.forget_history()
        fake.end_watches()  # the client watches again from a version now expired

        async def listed_again() -> bool:
            return fake.lists > lists

        await eventually(listed_again, WAIT_S)
        pod(fake, "decode-1", DECODE, stubs.ports[1])
        await until(http, router, lambda n: {"decode-0", "decode-1"} <= set(n))
        decode = (await watches(http, router))["decode"]
        assert decode["errors"] == 0
        assert decode["lists"] >= 2
    finally:
        await fake.stop()


async def test_api_errors_back_off_show_in_status_and_metrics_and_recover(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}])
    router = discovering_router()
    await until(http, router, lambda n: True)
    fake_api.fail_next(3, 503)
    fake_api.cut_watches()
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    await until(http, router, lambda n: "decode-0" in n)
    status = await watches(http, router)
    failed = sum(w["errors"] for w in status.values())
    assert failed >= 3
    assert any("503" in (w["last_error"] or "") for w in status.values())
    async with http.get(f"{router.url}/metrics") as resp:
        metrics = await resp.text()
    counted = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("pdfleet_discovery_errors_total{"))
    assert counted == failed

    async def watching() -> bool:
        return all(w["state"] == "watching" for w in (await watches(http, router)).values())

    await eventually(watching, WAIT_S)
    async with http.get(f"{router.url}/metrics") as resp:
        metrics = await resp.text()
    assert ('pdfleet_discovery_state{role="decode",source="kubernetes",state="watching"} 1.0'
            in metrics)
    assert ('pdfleet_discovery_nodes{role="decode",source="kubernetes"} 1.0') in metrics
    assert (f'pdfleet_node_info{{engine="sglang",node="{stubs.urls[0]}",phase="serving",'
            'pod="decode-0",role="decode",source="kubernetes"} 1.0') in metrics


async def test_an_unreachable_api_server_never_stops_the_router(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}])
    await fake_api.stop()  # nothing answers at its address now
    router = discovering_router(nodes=[{"url": stubs.urls[0], "role": "mixed"}])

    async def failing() -> bool:
        roles = (await watches(http, router)).values()
        return all(w["errors"] >= 1 and w["state"] == "backing_off" for w in roles)

    await eventually(failing, WAIT_S)
    async with http.post(f"{router.url}/generate", json=GENERATE) as resp:
        assert resp.status == 200


async def test_a_pod_joining_a_sleeping_fleet_is_released_before_any_traffic(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}, {}])
    router = discovering_router(nodes=[{"url": stubs.urls[0], "role": "prefill"}])
    pod(fake_api, "decode-0", DECODE, stubs.ports[1])
    await until(http, router, lambda n: n.get("decode-0", {}).get("phase") == "serving")
    tags = ["kv_cache", "weights"]
    async with http.post(f"{router.url}/release_memory_occupation", json={"tags": tags}) as r:
        assert r.status == 200
    pod(fake_api, "decode-1", DECODE, stubs.ports[2])
    found = await until(http, router, lambda n: n.get("decode-1", {}).get("phase") == "serving")
    assert found["decode-1"]["released_tags"] == tags
    async with http.get(f"{router.url}/cluster/operations") as resp:
        operations = (await resp.json())["operations"]
    join = operations[0]
    assert (join["operation"], join["tags"], join["outcome"]) == (
        "release_memory_occupation", tags, "success")
    assert [n["server"] for n in join["nodes"]] == [stubs.urls[2]]
    assert join["cause"] == "pod decode-1 joined a sleeping fleet"
    assert operations[1]["cause"] is None  # the caller's release
    shown = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "pdfleet", "status", "--router", router.url],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "(pod decode-0)" in shown.stdout and "(pod decode-1)" in shown.stdout
    async with http.post(f"{router.url}/resume_memory_occupation", json={}) as resp:
        assert resp.status == 200
        assert (await resp.json())["total"] == 3
    async with http.post(f"{router.url}/generate", json=GENERATE) as resp:
        assert resp.status == 200
    async with http.get(f"{stubs.urls[2]}/_stub/requests") as resp:
        received = [(r["path"], r["body"]) for r in await resp.json()]
    assert received[0][0] == "/release_memory_occupation"
    assert sorted(json.loads(received[0][1])["tags"]) == tags


async def test_with_on_join_none_a_pod_joins_a_sleeping_fleet_awake(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}])
    router = discovering_router(nodes=[{"url": stubs.urls[0], "role": "mixed"}],
                                on_join="none")
    async with http.post(f"{router.url}/release_memory_occupation", json={}) as r:
        assert r.status == 200
    pod(fake_api, "decode-0", DECODE, stubs.ports[1])
    await until(http, router, lambda n: n.get("decode-0", {}).get("phase") == "serving")
    found = await until(http, router, lambda n: n["decode-0"]["released_tags"] == [])
    assert found["decode-0"]["sleeping"] is False
    async with http.get(f"{stubs.urls[1]}/_stub/requests") as resp:
        assert await resp.json() == []  # no release was sent to it


async def test_every_worker_of_a_router_discovers_the_pods_and_drains_them(
        fake_api, discovering_router, stub_nodes):
    stubs = stub_nodes([{}])
    router = discovering_router(workers=2)
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    fresh = aiohttp.TCPConnector(force_close=True)  # each request may reach either worker
    async with aiohttp.ClientSession(connector=fresh) as http:

        async def every_worker_sees(phase: str) -> bool:
            seen: dict[str, str | None] = {}
            for _ in range(200):  # bounded: the kernel spreads connections over both
                async with http.get(f"{router.url}/cluster/status") as resp:
                    nodes = (await resp.json())["nodes"]
                    seen[resp.headers["X-Pdfleet-Worker"]] = next(
                        (n["phase"] for n in nodes if n["pod"] == "decode-0"), None)
                if len(seen) == 2:
                    break
            return set(seen) == {"0", "1"} and set(seen.values()) == {phase}

        await eventually(lambda: every_worker_sees("serving"), WAIT_S)
        fake_api.start_deleting("decode-0", namespace=NAMESPACE)
        await eventually(lambda: every_worker_sees("draining"), WAIT_S)


async def test_router_replicas_each_release_a_pod_joining_their_sleeping_fleet(
        fake_api, discovering_router, stub_nodes, http):
    stubs = stub_nodes([{}, {}])
    replicas = [discovering_router(), discovering_router()]
    pod(fake_api, "decode-0", DECODE, stubs.ports[0])
    for replica in replicas:
        await until(http, replica, lambda n: n.get("decode-0", {}).get("phase") == "serving")
    tags = ["kv_cache", "weights"]
    async with http.post(f"{replicas[0].url}/release_memory_occupation",
                         json={"tags": tags}) as resp:
        assert resp.status == 200
    # the other replica learns it from the node, at its next poll
    await until(http, replicas[1], lambda n: n["decode-0"]["released_tags"] == tags)
    pod(fake_api, "decode-1", DECODE, stubs.ports[1])
    for replica in replicas:
        found = await until(
            http, replica, lambda n: n.get("decode-1", {}).get("phase") == "serving")
        assert found["decode-1"]["released_tags"] == tags
    async with http.get(f"{stubs.urls[1]}/_stub/requests") as resp:
        received = [r["path"] for r in await resp.json()]
    assert set(received) == {"/release_memory_occupation"}
