"""Independent routers over one real fleet, sharing nothing: the nodes are the source of
truth. A node put to sleep through router A answers router B's next generation request with
a 503 that says it sleeps (`X-Pdfleet-Sleeping: 1`); B marks it asleep at once and places
the request elsewhere, or answers a clean 503 — never the node's error.

Each test starts its own router B, which polls rarely (`poll_interval_s` 300) so that only
the node's answer can tell it what router A did.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Router, free_port, start_cpu_node, wait_http_ok

pytestmark = pytest.mark.timeout(150)

BODY = {"text": "Two routers, one fleet", "sampling_params": {"max_new_tokens": 4,
                                                              "temperature": 0}}


@dataclass
class Replicas:
    a: Router
    nodes: list[dict[str, Any]]
    prefill_url: str
    mixed_url: str


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    bootstrap_port = free_port()
    started = [start_cpu_node("prefill", "--bootstrap-port", str(bootstrap_port)),
               start_cpu_node("decode"), start_cpu_node("mixed")]
    (_, prefill_url), (_, decode_url), (_, mixed_url) = started
    routers: list[Router] = []
    try:
        for process, url in started:
            wait_http_ok(f"{url}/health", process, timeout=90)
        nodes = [{"url": prefill_url, "role": "prefill", "bootstrap_port": bootstrap_port},
                 {"url": decode_url, "role": "decode"}, {"url": mixed_url, "role": "mixed"}]
        routers.append(Router(tmp_path_factory.mktemp("replicas"), nodes))
        yield Replicas(routers[0], nodes, prefill_url, mixed_url)
    finally:
        for router in routers:
            router.stop()
        for process, _ in started:
            process.stop()


@pytest.fixture
def router_b(replicas: Replicas, tmp_path: Path) -> Iterator[Router]:
    b = Router(tmp_path, replicas.nodes, poll_interval_s=300)
    yield b
    b.stop()


def post(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], Any]:
    request = urllib.request.Request(url, data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read())


def node_view(router: Router, url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{router.url}/cluster/status", timeout=30) as resp:
        status = json.loads(resp.read())
    return next(n for n in status["nodes"] if n["server"] == url)


def control(router: Router, operation: str, query: str = "") -> None:
    status, _, reply = post(f"{router.url}/{operation}{query}")
    assert status == 200, reply


def test_node_says_it_sleeps_on_its_generation_503(replicas):
    control(replicas.a, "release_memory_occupation", "?role=mixed")
    try:
        status, headers, _ = post(f"{replicas.mixed_url}/generate", BODY)
        assert status == 503 and headers.get("X-Pdfleet-Sleeping") == "1"
    finally:
        control(replicas.a, "resume_memory_occupation", "?role=mixed")


def test_generation_through_b_goes_to_an_awake_node_when_a_put_the_pair_to_sleep(
        replicas, router_b):
    assert post(f"{router_b.url}/generate", BODY)[0] == 200  # B knows the pair awake
    control(replicas.a, "release_memory_occupation", "?role=prefill")
    try:
        status, _, reply = post(f"{router_b.url}/generate", BODY)
        assert status == 200, reply
        assert len(reply["output_ids"]) == 4
        assert node_view(router_b, replicas.prefill_url)["sleeping"] is True
    finally:
        control(replicas.a, "resume_memory_occupation", "?role=prefill")


def test_generation_through_b_is_a_clean_503_when_a_put_the_fleet_to_sleep(replicas, router_b):
    control(replicas.a, "release_memory_occupation")
    try:
        status, headers, reply = post(f"{router_b.url}/generate", BODY)
        assert status == 503, reply
        assert "cluster is sleeping" in reply["error"]["message"]
        assert "server" not in reply["error"]  # the router's answer, not a node's error
        assert int(headers["Retry-After"]) >= 1
    finally:
        control(replicas.a, "resume_memory_occupation")


def test_streamed_generation_through_b_is_a_clean_503_when_a_put_the_fleet_to_sleep(
        replicas, router_b):
    control(replicas.a, "release_memory_occupation")
    try:
        status, _, reply = post(f"{router_b.url}/generate", {**BODY, "stream": True})
        assert status == 503, reply
        assert "cluster is sleeping" in reply["error"]["message"]
    finally:
        control(replicas.a, "resume_memory_occupation")
