"""`pdfleet router --workers N`: N router processes on one port, one fleet.

Which worker answers a connection is the kernel's choice (SO_REUSEPORT), so each check opens
fresh connections until every worker has answered one, told apart by `X-Pdfleet-Worker`.
The routers here never poll again after start (`poll_interval_s: 3600`): what one worker
sees of another's operation came over the workers' own channels, not from a node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psutil
import pytest

from tests.procs import ROOT, Router, eventually, free_port

pytestmark = pytest.mark.timeout(90)

WORKERS = 2
# Fresh connections tried, and seconds spent, before giving up on hearing every worker: a
# worker that is still starting gets no connections from the kernel yet.
MAX_CONNECTIONS = 2000
MAX_WAIT_S = 20
GENERATE = {"text": "hi", "sampling_params": {"max_new_tokens": 4}}


@pytest.fixture
async def fresh() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that opens a new connection for every request."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str,
               **kwargs: Any) -> tuple[int, int, Any]:
    """(worker, status, JSON body) of one request."""
    async with http.request(method, url, **kwargs) as resp:
        return int(resp.headers["X-Pdfleet-Worker"]), resp.status, await resp.json()


async def from_every_worker(http: aiohttp.ClientSession, method: str, url: str,
                            **kwargs: Any) -> dict[int, list[tuple[int, Any]]]:
    """Every (status, body) the workers answered, by worker, once each has answered."""
    answers: dict[int, list[tuple[int, Any]]] = {}
    async with asyncio.timeout(MAX_WAIT_S):
        for _ in range(MAX_CONNECTIONS):
            worker, status, body = await call(http, method, url, **kwargs)
            answers.setdefault(worker, []).append((status, body))
            if len(answers) == WORKERS:
                return answers
    raise AssertionError(f"only workers {sorted(answers)} answered {MAX_CONNECTIONS} requests")


def statuses(answers: dict[int, list[tuple[int, Any]]]) -> set[int]:
    return {status for replies in answers.values() for status, _ in replies}


def pd_fleet(stubs: Any) -> list[dict[str, Any]]:
    return [{"url": stubs.urls[0], "role": "prefill", "bootstrap_port": 8998},
            {"url": stubs.urls[1], "role": "decode"}]


async def test_workers_serve_generation_and_control(stub_nodes, router, fresh):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS, poll_interval_s=3600)
    generated = await from_every_worker(fresh, "POST", f"{r.url}/generate", json=GENERATE)
    assert statuses(generated) == {200}
    flushed = await from_every_worker(fresh, "POST", f"{r.url}/flush_cache", json={})
    assert statuses(flushed) == {200}
    assert all(body["total"] == 2 for replies in flushed.values() for _, body in replies)


async def test_sleep_and_wake_through_one_worker_are_seen_by_every_worker_at_once(
        stub_nodes, router, fresh):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS, poll_interval_s=3600)
    assert statuses(await from_every_worker(
        fresh, "POST", f"{r.url}/generate", json=GENERATE)) == {200}

    _, status, _ = await call(fresh, "POST", f"{r.url}/sleep", json={})
    assert status == 200
    asleep = await from_every_worker(fresh, "POST", f"{r.url}/generate", json=GENERATE)
    assert statuses(asleep) == {503}
    views = await from_every_worker(fresh, "GET", f"{r.url}/cluster/status")
    for replies in views.values():
        for _, view in replies:
            assert view["summary"]["sleeping"] == 2 and view["summary"]["routable"] == 0

    _, status, _ = await call(fresh, "POST", f"{r.url}/wake_up", json={})
    assert status == 200
    awake = await from_every_worker(fresh, "POST", f"{r.url}/generate", json=GENERATE)
    assert statuses(awake) == {200}


async def test_one_control_operation_at_a_time_across_workers(stub_nodes, router, fresh):
    hung = {"routes": {"/release_memory_occupation": {"mode": "hang"}}}
    stubs = stub_nodes([hung, {}])
    r = router(pd_fleet(stubs), workers=WORKERS, poll_interval_s=3600)
    release = asyncio.ensure_future(
        call(fresh, "POST", f"{r.url}/release_memory_occupation?timeout=15", json={}))

    async def running() -> bool:
        _, _, view = await call(fresh, "GET", f"{r.url}/cluster/status")
        return view["control_operation"] is not None

    await eventually(running)
    refused = await from_every_worker(fresh, "POST", f"{r.url}/flush_cache", json={})
    assert statuses(refused) == {409}
    for replies in refused.values():
        for _, body in replies:
            assert "release_memory_occupation" in body["detail"]
    assert not release.done()  # every refusal came while the release held the fleet

    _, status, body = await release
    assert status == 502 and "TimeoutError" in body["detail"]["failures"][0]["error"]
    flushed = await from_every_worker(fresh, "POST", f"{r.url}/flush_cache", json={})
    assert statuses(flushed) == {200}


async def test_workers_added_or_removed_through_one_worker_are_seen_by_every_worker(
        stub_nodes, router, fresh):
    stubs = stub_nodes([{}, {}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS, poll_interval_s=3600)
    new = {"url": stubs.urls[2], "role": "decode"}

    _, status, _ = await call(fresh, "POST", f"{r.url}/workers", json=new)
    assert status == 201
    listed = await from_every_worker(fresh, "GET", f"{r.url}/workers")
    for replies in listed.values():
        for _, body in replies:
            assert new["url"] in [w["url"] for w in body["workers"]]
    again = await from_every_worker(fresh, "POST", f"{r.url}/workers", json=new)
    assert statuses(again) == {409}

    _, status, _ = await call(fresh, "DELETE", f"{r.url}/workers", params={"url": new["url"]})
    assert status == 200
    listed = await from_every_worker(fresh, "GET", f"{r.url}/workers")
    for replies in listed.values():
        for _, body in replies:
            assert new["url"] not in [w["url"] for w in body["workers"]]
    gone = await from_every_worker(fresh, "DELETE", f"{r.url}/workers",
                                   params={"url": new["url"]})
    assert statuses(gone) == {404}


def worker_processes(r: Router) -> list[psutil.Process]:
    children = psutil.Process(r.process.proc.pid).children()
    assert len(children) == WORKERS
    return children


async def all_gone(processes: list[psutil.Process]) -> None:
    async def gone() -> bool:
        return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                       for p in processes)

    await eventually(gone, within_s=20)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_sigint_or_sigterm_stops_every_worker_and_removes_the_run_directory(
        stub_nodes, router, signum):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS)
    workers = worker_processes(r)
    metrics_dir = workers[0].environ()["PROMETHEUS_MULTIPROC_DIR"]
    assert await asyncio.to_thread(os.path.isdir, metrics_dir)
    os.kill(r.process.proc.pid, signum)  # the supervisor alone, as Ctrl-C in its terminal
    assert r.process.proc.wait(30) == 0
    await all_gone(workers)
    run_dir = os.path.dirname(metrics_dir)
    assert not await asyncio.to_thread(os.path.exists, run_dir)


async def test_workers_die_with_a_killed_supervisor(stub_nodes, router):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS)
    workers = worker_processes(r)
    os.kill(r.process.proc.pid, signal.SIGKILL)
    await all_gone(workers)


async def test_a_dead_worker_stops_the_router(stub_nodes, router):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS)
    workers = worker_processes(r)
    workers[0].kill()
    assert r.process.proc.wait(30) == 1
    await all_gone(workers)
    assert "worker 0 exited" in r.process.output()


def test_bad_workers_option_or_a_taken_port_gets_a_clear_error(tmp_path):
    config = tmp_path / "router.yaml"
    config.write_text(f"router: {{port: {free_port()}}}\nnodes: []\n")

    def pdfleet_router(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pdfleet", "router", "--config", str(config), *args],
            cwd=ROOT, capture_output=True, text=True, timeout=30,
            env={**os.environ, "COLUMNS": "200"})

    done = pdfleet_router("--workers", "0")
    assert done.returncode == 2 and "--workers" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = pdfleet_router("--workers", "2", "--port", str(taken.getsockname()[1]))
    assert done.returncode == 1 and "cannot serve on 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


def sample(metrics_text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_every_worker_shows_the_same_operations_log_and_metrics(stub_nodes, router, fresh):
    stubs = stub_nodes([{}, {}])
    r = router(pd_fleet(stubs), workers=WORKERS, poll_interval_s=3600)
    _, status, done = await call(fresh, "POST", f"{r.url}/release_memory_occupation", json={})
    assert status == 200
    logs = await from_every_worker(fresh, "GET", f"{r.url}/cluster/operations")
    for replies in logs.values():
        for _, body in replies:
            assert [op["request_id"] for op in body["operations"]] == [done["request_id"]]
    for worker in range(WORKERS):
        text = ""

        async def scraped(worker: int = worker) -> bool:
            nonlocal text
            async with fresh.get(f"{r.url}/metrics") as resp:
                text = await resp.text()
                return int(resp.headers["X-Pdfleet-Worker"]) == worker

        await eventually(scraped, within_s=MAX_WAIT_S)
        assert sample(text, "pdfleet_control_operations_total",
                      operation="release_memory_occupation", outcome="success") == 1
        assert sample(text, "pdfleet_node_sleeping", node=stubs.urls[1]) == 1
