"""Fault rules on a real node, as a real router reports them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import psutil
import pytest

from tests.node.conftest import NodeProcess, StartNode, greedy
from tests.procs import Router, eventually

pytestmark = pytest.mark.timeout(60)

TOKEN = "fault-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {"PDFLEET_ADMIN_TOKEN": TOKEN}
FLUSH = "/flush_cache"  # changes no memory state: every test can fault it again

MALFORMED = [
    ("route=/flush_cache,kind=delay,sekonds=1", {"route": "/x", "kind": "delay", "sekonds": 1},
     "sekonds"),
    ("kind=explode", {"kind": "explode"}, "kind"),
    ("kind=status,code=abc", {"kind": "status", "code": "abc"}, "code"),
    ("kind=hang,p=1.5", {"kind": "hang", "p": 1.5}, "p"),
    ("kind=delay", {"kind": "delay"}, "seconds"),
    ("kind=reset,at=trailers", {"kind": "reset", "at": "trailers"}, "at"),
]


@pytest.fixture(scope="module")
def node(start_node: StartNode) -> NodeProcess:
    return start_node("--enable-fault-injection", env=ENV)


@pytest.fixture(scope="module")
def router_url(node: NodeProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    router = Router(tmp_path_factory.mktemp("faults"), [{"url": node.url, "role": "mixed"}],
                    env=ENV)
    yield router.url
    router.stop()


@pytest.fixture(autouse=True)
async def no_rules_left(node: NodeProcess, http: aiohttp.ClientSession) -> Any:
    yield
    if node.alive():
        async with http.delete(f"{node.url}/_admin/faults", headers=AUTH) as resp:
            assert resp.status == 200


async def add_rule(http: aiohttp.ClientSession, node: NodeProcess, **rule: Any) -> dict:
    async with http.post(f"{node.url}/_admin/faults", json=rule, headers=AUTH) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return body["added"]


async def control(http: aiohttp.ClientSession, url: str, path: str, query: str = ""
                  ) -> tuple[int, Any, float]:
    started = time.monotonic()
    async with http.post(f"{url}{path}{query}", json={}, headers=AUTH) as resp:
        return resp.status, await resp.json(), time.monotonic() - started


def only_failure(body: Any) -> dict[str, Any]:
    failures = body["detail"]["failures"]
    assert len(failures) == 1, failures
    return failures[0]


@pytest.mark.parametrize(("body", "code", "extra"), [
    ("text", 503, {}), ("json", 400, {}), ("binary", 500, {"bytes": 65536}),
    ("huge", 500, {"bytes": 256 << 20}),
])
async def test_status_fault_is_reported_with_its_status_and_capped_detail(
        http, node, router_url, body, code, extra):
    await add_rule(http, node, route=FLUSH, kind="status", code=code, body=body, **extra)
    status, reply, elapsed = await control(http, router_url, FLUSH)
    assert status == 502
    failure = only_failure(reply)
    assert failure["status"] == code and "error" not in failure
    assert len(failure["detail"]) <= 500
    if body in ("text", "json", "huge"):
        assert "injected fault" in failure["detail"]
    if body == "binary":
        assert "\ufffd" in failure["detail"]
    assert elapsed < 5


async def test_hang_fault_becomes_a_timeout_at_the_deadline(http, node, router_url):
    await add_rule(http, node, route=FLUSH, kind="hang")
    status, reply, elapsed = await control(http, router_url, FLUSH, "?timeout=1")
    assert status == 502
    failure = only_failure(reply)
    assert "status" not in failure and failure["error"].startswith("TimeoutError")
    assert 0.9 <= elapsed < 3


async def test_deleting_the_rules_ends_a_hang_without_serving_it(http, node):
    await add_rule(http, node, route=FLUSH, kind="hang")
    held = asyncio.ensure_future(http.post(f"{node.url}{FLUSH}", headers=AUTH))

    async def fired() -> bool:
        async with http.get(f"{node.url}/_admin/faults", headers=AUTH) as resp:
            return (await resp.json())["rules"][0]["fired"] == 1

    await eventually(fired)
    async with http.delete(f"{node.url}/_admin/faults", headers=AUTH) as resp:
        assert (await resp.json())["deleted"] == 1
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(held, 10)


async def test_delay_fault_serves_normally_after_the_delay(http, node, router_url):
    await add_rule(http, node, route=FLUSH, kind="delay", seconds=0.5)
    status, reply, elapsed = await control(http, router_url, FLUSH)
    assert status == 200 and reply["nodes"][0]["result"]["success"] is True
    assert elapsed >= 0.5


@pytest.mark.parametrize("at", ["headers", "body"])
async def test_reset_fault_is_a_transport_error(http, node, router_url, at):
    await add_rule(http, node, route=FLUSH, kind="reset", at=at)
    status, reply, _ = await control(http, router_url, FLUSH)
    assert status == 502
    failure = only_failure(reply)
    assert "status" not in failure
    assert any(word in failure["error"] for word in (
        "Connection reset", "ServerDisconnected", "ClientPayloadError", "ClientOSError"))


async def test_reset_at_body_cuts_a_stream_mid_way(http, node):
    await add_rule(http, node, route="/generate", kind="reset", at="body")
    events = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(f"{node.url}/generate",
                             json=greedy("a stream cut short", 16, stream=True)) as resp:
            assert resp.status == 200
            async for line in resp.content:
                if line.startswith(b"data: "):
                    events.append(line)
    assert 1 <= len(events) < 16


async def test_slow_body_past_the_deadline_is_a_timeout(http, node, router_url):
    await add_rule(http, node, route=FLUSH, kind="slow_body", rate=10)
    status, reply, elapsed = await control(http, router_url, FLUSH, "?timeout=1")
    assert status == 502
    assert only_failure(reply)["error"].startswith("TimeoutError")
    assert elapsed < 3


async def test_slow_body_delivers_the_real_reply_at_the_rate(http, node):
    await add_rule(http, node, route="/is_sleeping", kind="slow_body", rate=200)
    started = time.monotonic()
    async with http.get(f"{node.url}/is_sleeping") as resp:
        body = await resp.read()
    assert b'"is_sleeping":false' in body.replace(b" ", b"")
    assert time.monotonic() - started >= len(body) / 200 * 0.8


async def test_oom_on_resume_answers_507_and_the_node_stays_asleep(http, node, router_url):
    await add_rule(http, node, kind="oom_on_resume", times=1)
    status, _, _ = await control(http, router_url, "/release_memory_occupation")
    assert status == 200
    status, reply, _ = await control(http, router_url, "/resume_memory_occupation")
    assert status == 502
    failure = only_failure(reply)
    assert failure["status"] == 507 and "not enough free memory" in failure["detail"]
    async with http.get(f"{node.url}/is_sleeping") as resp:
        assert (await resp.json())["released_tags"] == ["weights", "kv_cache"]
    status, _, _ = await control(http, router_url, "/resume_memory_occupation")
    assert status == 200


async def test_times_limits_a_rule_to_the_next_n_calls(http, node):
    await add_rule(http, node, route=FLUSH, kind="status", code=500, times=2)
    statuses = []
    for _ in range(3):
        async with http.post(f"{node.url}{FLUSH}", headers=AUTH) as resp:
            statuses.append(resp.status)
        async with http.get(f"{node.url}/_admin/faults", headers=AUTH) as resp:
            rules = (await resp.json())["rules"]
        if len(statuses) == 1:
            assert rules[0]["remaining"] == 1 and rules[0]["fired"] == 1
    assert statuses == [500, 500, 200]
    assert rules == []


@pytest.mark.parametrize(("p", "low", "high"), [(0.0, 0, 0), (0.5, 10, 50), (1.0, 60, 60)])
async def test_p_fires_on_that_fraction_of_calls(http, node, p, low, high):
    await add_rule(http, node, route="/health", kind="status", code=500, p=p)
    failed = 0
    for _ in range(60):
        async with http.get(f"{node.url}/health") as resp:
            failed += resp.status == 500
    assert low <= failed <= high


async def test_get_lists_rules_with_their_remaining_counts(http, node):
    first = await add_rule(http, node, route=FLUSH, kind="delay", seconds=0.1, times=3)
    await add_rule(http, node, kind="hang", route="/nowhere")
    async with http.get(f"{node.url}/_admin/faults", headers=AUTH) as resp:
        rules = (await resp.json())["rules"]
    assert [r["kind"] for r in rules] == ["delay", "hang"]
    assert rules[0] == {**first, "remaining": 3} and rules[1]["remaining"] is None


@pytest.mark.parametrize(("text", "rule", "key"), MALFORMED)
async def test_malformed_rule_at_run_time_is_400_naming_the_key(http, node, text, rule, key):
    async with http.post(f"{node.url}/_admin/faults", json=rule, headers=AUTH) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["key"] == key and f"'{key}'" in body["message"]


@pytest.mark.parametrize(("text", "rule", "key"), MALFORMED)
def test_malformed_rule_at_start_exits_2_naming_the_key(text, rule, key):
    done = subprocess.run(
        [sys.executable, "-m", "node", "--enable-fault-injection", "--fault", text],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"fault rule key '{key}'" in done.stderr and "Traceback" not in done.stderr


async def test_admin_routes_need_the_admin_token(http, node):
    async with http.get(f"{node.url}/_admin/faults") as resp:
        assert resp.status == 401
    async with http.post(f"{node.url}/_admin/faults", json={"kind": "hang"},
                         headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401


async def test_admin_routes_are_absent_without_fault_injection(http, mixed_node):
    for method in ("GET", "POST", "DELETE"):
        async with http.request(method, f"{mixed_node.url}/_admin/faults") as resp:
            assert resp.status in (404, 405)


def test_crash_exits_the_process_after_the_release_started(start_node, tmp_path):
    node = start_node("--enable-fault-injection",
                      "--fault", "route=/release_memory_occupation,kind=crash,code=3")
    router = Router(tmp_path, [{"url": node.url, "role": "mixed"}])
    try:
        request = urllib.request.Request(f"{router.url}/release_memory_occupation", data=b"{}",
                                         method="POST")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=30)
        failure = only_failure(json.loads(raised.value.read()))
        assert raised.value.code == 502 and "status" not in failure
        assert node.process.proc.wait(timeout=10) == 3
        assert "crashing with exit code 3" in node.output()
    finally:
        router.stop()



async def test_deleting_a_hang_whose_caller_left_leaves_no_traceback(http, node):
    await add_rule(http, node, route=FLUSH, kind="hang")
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    caller_port = writer.get_extra_info("sockname")[1]
    writer.write(f"POST {FLUSH} HTTP/1.1\r\nHost: node\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()

    async def fired() -> bool:
        async with http.get(f"{node.url}/_admin/faults", headers=AUTH) as resp:
            return (await resp.json())["rules"][0]["fired"] == 1

    await eventually(fired)
    writer.close()
    await writer.wait_closed()

    async def node_closed_its_side() -> bool:
        connections = psutil.Process(node.process.proc.pid).net_connections()
        return not any(c.raddr and c.raddr.port == caller_port for c in connections)

    await eventually(node_closed_its_side)
    async with http.delete(f"{node.url}/_admin/faults", headers=AUTH) as resp:
        assert (await resp.json())["deleted"] == 1
    # A later round trip: by its answer the node has run what followed the caller's leaving.
    async with http.get(f"{node.url}/health") as resp:
        assert resp.status == 200
    assert "Traceback" not in node.output()
    assert not await reader.read()
