"""`pdfleet faultproxy` in front of a real node: everything passes through unchanged
(streams included) and the node's fault rules fire on the proxy."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.node.conftest import NodeProcess, greedy, launch_node
from tests.procs import Process, free_port, wait_http_ok

pytestmark = pytest.mark.timeout(60)

# Passed through by the proxy as the node sent them, but a clock's reading may differ
# between two requests.
VARYING_HEADERS = {"date"}


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    started = launch_node()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def proxy_url(node: NodeProcess) -> Iterator[str]:
    port = free_port()
    proxy = Process([sys.executable, "-m", "pdfleet", "faultproxy", "--listen",
                     f"127.0.0.1:{port}", "--upstream", node.url])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{url}/_admin/faults", proxy)
        yield url
    finally:
        proxy.stop()


@pytest.fixture(autouse=True)
async def no_rules_left(proxy_url: str, http: aiohttp.ClientSession) -> Any:
    yield
    async with http.delete(f"{proxy_url}/_admin/faults") as resp:
        assert resp.status == 200


async def exchange(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
                   ) -> tuple[int, list[tuple[str, str]], bytes]:
    async with http.request(method, url, **kwargs) as resp:
        body = await resp.read()
        headers = [(k.lower(), v) for k, v in resp.headers.items()
                   if k.lower() not in VARYING_HEADERS]
        return resp.status, headers, body


@pytest.mark.parametrize(("method", "path", "kwargs"), [
    ("GET", "/v1/models", {}),
    ("GET", "/is_sleeping?x=1&x=2", {}),
    ("POST", "/generate", {"json": greedy("byte for byte", 12, rid="fixed-id")}),
    ("POST", "/generate", {"json": greedy("a streamed reply", 12, rid="fixed-id", stream=True)}),
    ("POST", "/generate", {"data": b"{not json", "headers": {"Content-Type": "text/plain"}}),
    ("GET", "/no/such/route", {}),
])
async def test_pass_through_is_byte_identical(http, node, proxy_url, method, path, kwargs):
    direct = await exchange(http, method, node.url + path, **kwargs)
    proxied = await exchange(http, method, proxy_url + path, **kwargs)
    assert proxied == direct


async def test_stream_arrives_event_by_event(http, proxy_url):
    async with http.post(f"{proxy_url}/generate",
                         json=greedy("stream through the proxy", 8, stream=True)) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line async for line in resp.content if line.startswith(b"data: ")]
    assert len(events) == 9 and events[-1].strip() == b"data: [DONE]"


async def test_a_rule_fires_on_the_proxy_then_passes_through(http, proxy_url):
    async with http.post(f"{proxy_url}/_admin/faults", json={
            "route": "/v1/models", "kind": "status", "code": 503, "times": 1}) as resp:
        assert resp.status == 201
    status, _, body = await exchange(http, "GET", f"{proxy_url}/v1/models")
    assert (status, body) == (503, b"injected fault: status 503")
    status, _, body = await exchange(http, "GET", f"{proxy_url}/v1/models")
    assert status == 200 and b"pdfleet-tiny" in body


async def test_reset_rule_drops_the_proxied_connection(http, proxy_url):
    async with http.post(f"{proxy_url}/_admin/faults",
                         json={"route": "/health", "kind": "reset"}) as resp:
        assert resp.status == 201
    with pytest.raises(aiohttp.ClientError):
        await exchange(http, "GET", f"{proxy_url}/health")


async def test_unreachable_upstream_is_a_clear_502(http):
    port = free_port()
    proxy = Process([sys.executable, "-m", "pdfleet", "faultproxy", "--listen",
                     f"127.0.0.1:{port}", "--upstream", f"http://127.0.0.1:{free_port()}"])
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/_admin/faults", proxy)
        status, _, body = await exchange(http, "GET", f"http://127.0.0.1:{port}/health")
        assert status == 502 and b"faultproxy: upstream" in body
    finally:
        proxy.stop()


def test_malformed_rule_stops_the_proxy_with_exit_2_naming_the_key():
    done = subprocess.run(
        [sys.executable, "-m", "pdfleet", "faultproxy", "--listen", "127.0.0.1:1",
         "--upstream", "http://127.0.0.1:2", "--fault", "kind=status,cod=500"],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "'cod'" in done.stderr


def test_says_where_it_listens_and_what_it_forwards_to(node: NodeProcess) -> None:
    port = free_port()
    proxy = Process([sys.executable, "-m", "pdfleet", "faultproxy", "--listen",
                     f"127.0.0.1:{port}", "--upstream", node.url], stdout=subprocess.PIPE)
    try:
        line = proxy.wait_for_line("pdfleet faultproxy listening", timeout=30)
        assert line.strip() == (f"pdfleet faultproxy listening on http://127.0.0.1:{port}, "
                                f"forwarding to {node.url}")
        wait_http_ok(f"http://127.0.0.1:{port}/_admin/faults", proxy)
    finally:
        proxy.stop()
