"""Kubernetes discovery at scale, against the fake API server (tests/kubernetes).

1. List: N ready pods appear while the router's watch is cut, so its next list brings them
   all; time from the API server's list reply to the router's /cluster/status showing all
   N, and the router's CPU and RSS for it.
2. Watch: M events at once (new pods, readiness flips, deletes, a third each); time from
   the first event to the router's fleet view matching the pods, with CPU and RSS.
3. Control fan-out over K discovered nodes against K static ones (the same K stub nodes):
   median wall time of a release and a resume through each router.

    python scripts/bench_discovery.py [--pods 1000] [--events 1000] [--fanout 512]
                                      [--runs 10] [--json out.json]

Pods' IPs are 127.0.0.1, each its own port; in parts 1 and 2 nothing listens there and the
routers never poll after start (poll_interval_s 3600), so what is measured is discovery
alone. The router is pinned to CPU 1 and the stub nodes to CPU 0 (when the machine has two);
the fake API server and the client run in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.kubernetes.discovering_router import NAMESPACE, SELECTORS, DiscoveringRouter
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.procs import Router, StubNodes, eventually

DECODE = {"app": "sglang", "role": "decode"}
FIRST_PORT = 20000
QUIET = {"poll_interval_s": 3600}
WAIT_S = 300


def pin(pid: int, cpu: int) -> None:
    if len(os.sched_getaffinity(0)) > 1:
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            proc.cpu_affinity([cpu])


def add_pod(fake: FakeApiServer, index: int, port: int | None = None) -> None:
    fake.add_pod(f"decode-{index}", DECODE, namespace=NAMESPACE, ready=True,
                 annotations={"pdfleet.io/port": str(port or FIRST_PORT + index)})


async def discovered(http: aiohttp.ClientSession, url: str) -> set[str]:
    async with http.get(f"{url}/cluster/status") as resp:
        nodes = (await resp.json())["nodes"]
    return {n["pod"] for n in nodes if n["source"] == "kubernetes" and n["phase"] == "serving"}


async def until_view(http: aiohttp.ClientSession, url: str, expected: set[str]) -> float:
    """Read the router's view until it is `expected`; the perf_counter time it was seen."""

    async def matches() -> bool:
        return await discovered(http, url) == expected

    await eventually(matches, WAIT_S)
    return time.perf_counter()


class Usage:
    """The router's CPU seconds and RSS over one phase."""

    def __init__(self, pid: int) -> None:
        self._proc = psutil.Process(pid)
        times = self._proc.cpu_times()
        self._cpu = times.user + times.system

    def done(self) -> dict[str, float]:
        times = self._proc.cpu_times()
        return {"router_cpu_s": round(times.user + times.system - self._cpu, 3),
                "router_rss_mib": round(self._proc.memory_info().rss / 2**20, 1)}


async def bench_list_and_watch(tmp: Path, pods: int, events: int) -> dict[str, Any]:
    fake = await FakeApiServer().start()
    router = await asyncio.to_thread(DiscoveringRouter, tmp, fake.kubeconfig(NAMESPACE), [],
                                     QUIET)
    pin(router.process.proc.pid, 1)
    try:
        async with aiohttp.ClientSession() as http:
            await eventually(lambda: _watching(fake), WAIT_S)
            # The watch is cut, so the pods added meanwhile reach the router by its next
            # list (after its back-off), all at once.
            usage = Usage(router.process.proc.pid)
            lists = fake.lists
            fake.cut_watches()
            for index in range(pods):
                add_pod(fake, index)
            expected = {f"decode-{i}" for i in range(pods)}
            seen = await until_view(http, router.url, expected)
            listing = {"pods": pods, "seconds": round(seen - fake.listed_at[lists], 3),
                       **usage.done()}

            third = events // 3
            usage = Usage(router.process.proc.pid)
            started = time.perf_counter()
            for index in range(pods, pods + events - 2 * third):
                add_pod(fake, index)
                expected.add(f"decode-{index}")
            for index in range(third):
                fake.set_ready(f"decode-{index}", False, namespace=NAMESPACE)
                expected.discard(f"decode-{index}")
            for index in range(third, 2 * third):
                fake.delete_pod(f"decode-{index}", namespace=NAMESPACE)
                expected.discard(f"decode-{index}")
            seen = await until_view(http, router.url, expected)
            watching = {"events": events, "seconds": round(seen - started, 3),
                        "fleet_after": len(expected), **usage.done()}
        return {"list": listing, "watch": watching}
    finally:
        router.stop()
        await fake.stop()


async def _watching(fake: FakeApiServer) -> bool:
    return len(fake.watches) == len(SELECTORS)


async def timed(http: aiohttp.ClientSession, url: str, operation: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        async with http.post(f"{url}/{operation}", json={"tags": ["kv_cache"]}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


async def bench_fanout(tmp: Path, count: int, runs: int) -> dict[str, Any]:
    stubs = await asyncio.to_thread(StubNodes, [{}] * count, 120)
    pin(stubs.process.proc.pid, 0)
    fake = await FakeApiServer().start()
    routers: dict[str, Callable[[], Any]] = {
        "static": lambda: Router(tmp, [{"url": u, "role": "decode"} for u in stubs.urls],
                                 **QUIET),
        "kubernetes": lambda: DiscoveringRouter(tmp, fake.kubeconfig(NAMESPACE), [], QUIET),
    }
    for index, port in enumerate(stubs.ports):
        add_pod(fake, index, port)
    result: dict[str, Any] = {"nodes": count}
    try:
        async with aiohttp.ClientSession() as http:
            for source, start in routers.items():
                router = await asyncio.to_thread(start)
                pin(router.process.proc.pid, 1)
                try:
                    if source == "kubernetes":
                        await until_view(http, router.url, {f"decode-{i}" for i in range(count)})
                    result[source] = {
                        "release_ms": await timed(http, router.url,
                                                  "release_memory_occupation", runs),
                        "resume_ms": await timed(http, router.url,
                                                 "resume_memory_occupation", runs)}
                finally:
                    router.stop()
    finally:
        await fake.stop()
        stubs.stop()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--fanout", type=int, default=512)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            **await bench_list_and_watch(Path(tmp), args.pods, args.events),
            "fanout": await bench_fanout(Path(tmp), args.fanout, args.runs),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
