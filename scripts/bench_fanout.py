"""Control fan-out benchmark: wall time of one operation (a sleep, or a weight update from
disk) through the router to N stub nodes that each take a fixed time, against that slowest
node's own time; and the router's memory when a node answers with a 1 GiB error body.

    python scripts/bench_fanout.py [--nodes 8 64 512] [--delay 0.1] [--runs 10] [--json out.json]
        [--operation release|update]

Each update names a new weight version, so no node is skipped as already at it.

The stub nodes run in one process pinned to CPU 0 and the router is pinned to CPU 1 (when
the machine has two), so they do not compete for a core; with more than two CPUs this
process (the client, and the straight-to-nodes baseline) runs on CPU 2.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pdfleet.vocabulary import Operation
from router.http.client import call_node
from router.http.pool import NodeClient, new_session
from tests.procs import Router, StubNodes

VERSIONS = itertools.count(1)


def operation_body(operation: Operation) -> dict[str, Any]:
    """The body of one benchmarked operation: a release of the KV cache, or an update from
    disk to a version no node has yet."""
    if operation is Operation.UPDATE_FROM_DISK:
        return {"model_path": "/ckpt/step.safetensors", "weight_version": f"v{next(VERSIONS)}"}
    return {"tags": ["kv_cache"]}


def pin(pid: int, cpu: int) -> None:
    if len(os.sched_getaffinity(0)) > 1:
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            proc.cpu_affinity([cpu])


async def timed_operation(http: aiohttp.ClientSession, url: str,
                          operation: Operation) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    async with http.post(f"{url}/{operation}", json=operation_body(operation)) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    return (time.perf_counter() - started) * 1000, body


async def timed_direct(client: NodeClient, urls: list[str], operation: Operation) -> float:
    """The same operation sent straight to every node at once with the router's own node
    client, as the baseline: the slowest node's own time as a client sees it, stub serving
    costs included."""
    deadline = asyncio.get_running_loop().time() + 60
    body = json.dumps(operation_body(operation)).encode()
    started = time.perf_counter()
    await asyncio.gather(*(call_node(client, "POST", f"{url}/{operation}",
                                     deadline=deadline, body=body,
                                     headers={"Content-Type": "application/json"})
                           for url in urls))
    return (time.perf_counter() - started) * 1000


async def fanout_case(tmp: Path, n: int, delay: float, runs: int,
                      operation: Operation) -> dict[str, Any]:
    stubs = StubNodes([{"delay": delay} for _ in range(n)], timeout=120)
    router = Router(tmp, [{"url": u, "role": "decode"} for u in stubs.urls],
                    poll_interval_s=3600, control_timeout_s=60)
    pin(stubs.process.proc.pid, 0)
    pin(router.process.proc.pid, 1)
    try:
        client = new_session()
        async with aiohttp.ClientSession() as http:
            cold_ms, _ = await timed_operation(http, router.url, operation)
            await timed_direct(client, stubs.urls, operation)
            walls, internals, directs = [], [], []
            for _ in range(runs):
                directs.append(await timed_direct(client, stubs.urls, operation))
                wall, body = await timed_operation(http, router.url, operation)
                walls.append(wall)
                internals.append(body["elapsed_ms"])
                assert body["succeeded"] == n
        await client.close()
    finally:
        router.stop()
        stubs.stop()
    wall = statistics.median(walls)
    direct = statistics.median(directs)
    return {
        "operation": operation.short, "nodes": n, "node_delay_ms": delay * 1000,
        "direct_ms_p50": round(direct, 1),
        "cold_wall_ms": round(cold_ms, 1), "wall_ms_p50": round(wall, 1),
        "wall_ms_max": round(max(walls), 1),
        "router_elapsed_ms_p50": round(statistics.median(internals), 1),
        "overhead_ms_p50": round(wall - direct, 1),
        "overhead_vs_delay_ms_p50": round(wall - delay * 1000, 1),
    }


async def huge_body_case(tmp: Path, size: int) -> dict[str, Any]:
    stubs = StubNodes([{"status": 500, "body": "huge", "size": size}])
    router = Router(tmp, [{"url": stubs.urls[0], "role": "decode"}], poll_interval_s=3600)
    try:
        proc = psutil.Process(router.process.proc.pid)
        before = proc.memory_info().rss
        started = time.perf_counter()
        async with aiohttp.ClientSession() as http, http.post(
            f"{router.url}/release_memory_occupation", json={}
        ) as resp:
            body = await resp.json()
        elapsed = (time.perf_counter() - started) * 1000
        after = proc.memory_info().rss
    finally:
        router.stop()
        stubs.stop()
    return {
        "body_bytes": size, "status": resp.status, "elapsed_ms": round(elapsed, 1),
        "detail_chars": len(body["detail"]["failures"][0]["detail"]),
        "rss_before_mib": round(before / 2**20, 1), "rss_after_mib": round(after / 2**20, 1),
        "rss_growth_mib": round((after - before) / 2**20, 2),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--delay", type=float, default=0.1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--huge-bytes", type=int, default=1 << 30)
    parser.add_argument("--operation", choices=["release", "update"], default="release",
                        help="what is fanned out: a release, or a weight update from disk")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) > 2:
        os.sched_setaffinity(0, {2})
    with tempfile.TemporaryDirectory() as tmp:
        operation = Operation.from_short(args.operation)
        fanout = [await fanout_case(Path(tmp), n, args.delay, args.runs, operation)
                  for n in args.nodes]
        huge = await huge_body_case(Path(tmp), args.huge_bytes)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
              f"Python {platform.python_version()}"
    print(f"machine: {machine}; operation: {args.operation}\n")
    print("| nodes | node delay | straight to nodes p50 | through router p50 | router max | "
          "overhead p50 | wall - delay p50 | first call |")
    print("|---|---|---|---|---|---|---|---|")
    for row in fanout:
        print(f"| {row['nodes']} | {row['node_delay_ms']:.0f} ms | {row['direct_ms_p50']} ms | "
              f"{row['wall_ms_p50']} ms | {row['wall_ms_max']} ms | {row['overhead_ms_p50']} ms | "
              f"{row['overhead_vs_delay_ms_p50']} ms | {row['cold_wall_ms']} ms |")
    print(f"\n1 GiB error body: answered {huge['status']} in {huge['elapsed_ms']} ms, detail "
          f"{huge['detail_chars']} chars, router RSS {huge['rss_before_mib']} -> "
          f"{huge['rss_after_mib']} MiB ({huge['rss_growth_mib']:+} MiB)")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "fanout": fanout, "huge_body": huge},
                                        indent=2))


if __name__ == "__main__":
    asyncio.run(main())
