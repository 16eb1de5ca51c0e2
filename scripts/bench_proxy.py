"""Generate-proxy benchmark (SPEC 8): requests/s, p50/p99 latency and router CPU per request
for OpenAI's `/v1/completions` and SGLang's `/generate` straight to a stub decode node,
through pdfleet, and through sglang-router and vllm-router in PD mode, on the same stub
nodes, in one run.

    python scripts/bench_proxy.py [--duration 5] [--concurrency 32 128]
        [--routes /v1/completions /generate] [--json out.json]

Each router runs pinned to CPU 1; the load generator (this process) runs on CPU 0 and the
stub nodes (scripts/bench_stub.py) on the CPU after the router's, or on CPU 0 beside it on a
2-CPU machine. `--workers 1 2 4` measures pdfleet once per worker count, each pinned to CPUs
1..N (N + 2 CPUs needed). The load generator is a raw asyncio HTTP/1.1 client (uvloop,
httptools) keeping one connection per concurrent request, so the stub and the client cost
little next to the routers. Router CPU is the router process tree's user+system time over the
measured window divided by the requests served in it: it does not depend on which side is the
bottleneck. "Router cores" is that time over the window's length: above N, the pinning did not
hold (a sandboxed kernel may ignore it). Non-streaming replies are one JSON body; streaming
replies are `--chunks` SSE events `--chunk-gap-ms` apart. A peer router that is not installed
or does not start is reported and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httptools
import psutil
import uvloop
import yaml

ROOT = Path(__file__).resolve().parent.parent
LOAD_CPU, ROUTER_CPU = 0, 1
READY_TIMEOUT_S = 60.0
PROMPT_BODY = {"model": "stub-model", "prompt": "Hello, my name is", "max_tokens": 16,
               "temperature": 0}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": PROMPT_BODY,
    "/generate": {"text": "Hello, my name is",
                  "sampling_params": {"max_new_tokens": 16, "temperature": 0}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpu: int | set[int] | None) -> Callable[[], None] | None:
    """A preexec hook that pins the child (and every thread and process it starts) to `cpu`."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu} if isinstance(cpu, int) else cpu)


def spawn(args: list[str], cpu: int | set[int] | None, env: dict[str, str] | None = None,
          stdout: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=stdout,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=pinned(cpu))


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cpu_seconds(pid: int) -> float:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs)


class Connection(asyncio.Protocol):
    """One keep-alive client connection: sends a prebuilt request, reads the reply with
    httptools (chunked framing included), keeps only the reply's last bytes."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[tuple[int, bytes]] | None = None
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.tail = (self.tail + body)[-64:]

    def on_message_complete(self) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_result((self.parser.get_status_code(), self.tail))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.tail = b""
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.reply


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0


class LoadGenerator:
    def __init__(self, port: int, route: str, stream: bool, concurrency: int) -> None:
        body = json.dumps({**BODIES[route], "stream": stream}).encode()
        self.request = (f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                        "\r\n").encode() + body
        self.port = port
        self.stream = stream
        self.concurrency = concurrency
        self.connections: list[Connection] = []

    async def connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(Connection, "127.0.0.1", self.port)
        return conn

    async def open(self) -> None:
        self.connections = [await self.connect() for _ in range(self.concurrency)]

    def close(self) -> None:
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.close()

    async def run(self, seconds: float) -> Phase:
        phase = Phase()
        end = time.perf_counter() + seconds
        await asyncio.gather(*(self._worker(i, end, phase) for i in range(self.concurrency)))
        return phase

    async def _worker(self, index: int, end: float, phase: Phase) -> None:
        while (started := time.perf_counter()) < end:
            conn = self.connections[index]
            try:
                if conn.transport is None or conn.transport.is_closing():
                    conn = self.connections[index] = await self.connect()
                status, tail = await conn.send(self.request)
            except OSError:
                phase.errors += 1
                continue
            if status != 200 or (self.stream and b"[DONE]" not in tail):
                phase.errors += 1
                continue
            phase.latencies_ms.append((time.perf_counter() - started) * 1000)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else (values[0] if values else float("nan"))


async def measure(port: int, route: str, stream: bool, concurrency: int, warmup_s: float,
                  seconds: float, router_pid: int | None) -> dict[str, Any]:
    load = LoadGenerator(port, route, stream, concurrency)
    await load.open()
    try:
        await load.run(warmup_s)
        cpu_before = cpu_seconds(router_pid) if router_pid else 0.0
        started = time.perf_counter()
        phase = await load.run(seconds)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(router_pid) - cpu_before if router_pid else None
    finally:
        load.close()
    served = len(phase.latencies_ms)
    return {
        "rps": round(served / elapsed, 1),
        "p50_ms": round(percentile(phase.latencies_ms, 50), 2),
        "p99_ms": round(percentile(phase.latencies_ms, 99), 2),
        "router_cpu_us_per_req": round(cpu / served * 1e6, 1) if cpu is not None and served
        else None,
        "router_cores": round(cpu / elapsed, 2) if cpu is not None else None,
        "requests": served,
        "errors": phase.errors,
    }


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None: straight to the node

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def start_stub(chunks: int, gap_ms: float, cpu: int | None) -> tuple[subprocess.Popen[bytes],
                                                                      int, int]:
    proc = spawn([sys.executable, "scripts/bench_stub.py", "--chunks", str(chunks),
                  "--chunk-gap-ms", str(gap_ms)], cpu, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("READY "):
        stop(proc)
        raise SystemExit(f"stub nodes did not start: {line!r}")
    ports = json.loads(line[6:])
    return proc, ports["prefill"][0], ports["decode"][0]


def router_command(name: str, prefill: str, decode: str, bootstrap_port: int, port: int,
                   tmp: Path, workers: int = 1) -> tuple[list[str], dict[str, str], str | None]:
    """A router's command line, its environment, and the module it needs (None: ours)."""
    if name == "pdfleet":
        config = tmp / "pdfleet.yaml"
        config.write_text(yaml.safe_dump({
            "router": {"port": port, "poll_interval_s": 3600, "request_timeout_s": 60},
            "nodes": [{"url": prefill, "role": "prefill", "bootstrap_port": bootstrap_port},
                      {"url": decode, "role": "decode"}],
        }))
        return [sys.executable, "-m", "pdfleet", "router", "--config", str(config),
                "--workers", str(workers)], {}, None
    # Both peers export Prometheus metrics on a fixed port by default; give each a free one.
    listen = ["--host", "127.0.0.1", "--port", str(port), "--policy", "round_robin",
              "--prometheus-port", str(free_port())]
    if name == "sglang-router":
        # It would fetch a tokenizer from the Hub at start: offline, with nowhere to go.
        offline = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
        return ([sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation",
                 "--prefill", prefill, str(bootstrap_port), "--decode", decode,
                 "--log-level", "warn", *listen], offline, "sglang_router")
    if name == "vllm-router":
        return ([sys.executable, "-m", "vllm_router.launch_router", "--vllm-pd-disaggregation",
                 "--prefill", prefill, "--decode", decode, "--log-level", "warning", *listen],
                {}, "vllm_router")
    raise SystemExit(f"unknown router {name!r}: pdfleet, sglang-router or vllm-router")


def serves_completions(port: int) -> bool:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(PROMPT_BODY).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def start_router(name: str, args: list[str], env: dict[str, str], port: int,
                 cpu: int | set[int] | None, log: Path) -> tuple[Target | None, str]:
    """The running router, or None and why not."""
    with log.open("wb") as out:
        proc = spawn(args, cpu, env, stdout=out.fileno())
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            return None, f"exited with code {proc.returncode}: {' / '.join(tail)}"
        if serves_completions(port):
            return Target(name, port, proc), "ok"
        time.sleep(0.2)  # readiness polling, bounded by the deadline
    stop(proc)
    return None, f"did not serve /v1/completions within {READY_TIMEOUT_S:.0f} s"


def measure_target(target: Target, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell (mode x concurrency) for one target, one router running at a time."""
    cells = []
    for route in args.routes:
        for stream in (False, True):
            for concurrency in args.concurrency:
                cell = uvloop.run(measure(target.port, route, stream, concurrency, args.warmup,
                                          args.duration, target.pid))
                mode = "stream" if stream else "unary"
                cells.append({"target": target.name, "route": route, "mode": mode,
                              "concurrency": concurrency, **cell})
                print(f"  {target.name} {route} {mode} c={concurrency}: {cell['rps']:.0f} "
                      f"req/s, p50 {cell['p50_ms']} ms", file=sys.stderr, flush=True)
    return cells


def machine_line(pinning: bool, stub_cpu: int | None) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = (f"routers pinned to CPU {ROUTER_CPU} (pdfleet --workers N: CPUs {ROUTER_CPU} to "
             f"N), load generator on CPU {LOAD_CPU}, stubs on CPU {stub_cpu}"
             if pinning else "no pinning (one CPU)")
    return (f"{cpu}, {os.cpu_count()} CPUs ({where}), Python {platform.python_version()}")


def print_table(cells: list[dict[str, Any]]) -> None:
    def key(c: dict[str, Any]) -> tuple[str, str, int]:
        return c["route"], c["mode"], c["concurrency"]

    direct = {key(c): c["p50_ms"] for c in cells if c["target"] == "direct"}
    print("| route | mode | concurrency | target | req/s | p50 ms | p99 ms | p50 added vs direct "
          "| router CPU µs/req | router cores | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for c in sorted(cells, key=key):
        base = direct.get(key(c))
        added = "-" if c["target"] == "direct" or base is None else \
            f"{c['p50_ms'] - base:+.2f} ms"
        cpu = "-" if c["router_cpu_us_per_req"] is None else f"{c['router_cpu_us_per_req']:.0f}"
        cores = "-" if c["router_cores"] is None else f"{c['router_cores']:.2f}"
        print(f"| {c['route']} | {c['mode']} | {c['concurrency']} | {c['target']} | "
              f"{c['rps']:.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | {added} | {cpu} | "
              f"{cores} | {c['errors']} |")


def print_scaling(cells: list[dict[str, Any]]) -> None:
    """pdfleet with N workers against N times its one-process rate, per cell."""
    def key(c: dict[str, Any]) -> tuple[str, str, int]:
        return c["route"], c["mode"], c["concurrency"]

    one = {key(c): c["rps"] for c in cells if c["target"] == "pdfleet"}
    several = [c for c in cells if c["target"].startswith("pdfleet") and c["workers"] > 1]
    if not several or not one:
        return
    print("\n| workers | route | mode | concurrency | req/s | one worker's req/s "
          "| of N x one worker's |")
    print("|---|---|---|---|---|---|---|")
    for c in sorted(several, key=lambda c: (key(c), c["workers"])):
        base = one[key(c)]
        print(f"| {c['workers']} | {c['route']} | {c['mode']} | {c['concurrency']} | "
              f"{c['rps']:.0f} | {base:.0f} | {c['rps'] / (c['workers'] * base):.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--routes", nargs="+", default=list(BODIES), choices=list(BODIES))
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-gap-ms", type=float, default=1.0)
    parser.add_argument("--routers", nargs="+", default=["pdfleet", "sglang-router",
                                                          "vllm-router"])
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="pdfleet --workers counts, one target each, pinned to that many "
                             "CPUs from CPU 1; the stubs get the next CPU")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    pinning = len(os.sched_getaffinity(0)) > 1
    load_cpu = LOAD_CPU if pinning else None
    router_cpu = ROUTER_CPU if pinning else None
    most = max(args.workers)
    if most > 1 and len(os.sched_getaffinity(0)) < most + 2:
        raise SystemExit(f"--workers {most} needs {most + 2} CPUs: the load generator's, "
                         f"{most} for the router and the stubs'")
    if load_cpu is not None:
        os.sched_setaffinity(0, {load_cpu})
    # Where there are CPUs to spare, the stubs get their own, after the router's.
    stub_cpu = ROUTER_CPU + most if len(os.sched_getaffinity(0)) > 2 else load_cpu
    stub, prefill_port, decode_port = start_stub(args.chunks, args.chunk_gap_ms, stub_cpu)
    prefill, decode = f"http://127.0.0.1:{prefill_port}", f"http://127.0.0.1:{decode_port}"
    notes: dict[str, str] = {"direct": "straight to the decode stub, no router"}
    cells: list[dict[str, Any]] = []
    try:
        cells += measure_target(Target("direct", decode_port), args)
        with tempfile.TemporaryDirectory() as tmp:
            runs = [(name, n) for name in args.routers
                    for n in (args.workers if name == "pdfleet" else [1])]
            for router_name, workers in runs:
                name = router_name if workers == 1 else f"{router_name} --workers {workers}"
                port = free_port()
                cmd, env, module = router_command(router_name, prefill, decode, 8998, port,
                                                  Path(tmp), workers)
                if module is not None and importlib.util.find_spec(module) is None:
                    notes[name] = f"skipped: not installed (pip install {name})"
                    continue
                cpus = None if router_cpu is None else set(
                    range(router_cpu, router_cpu + workers))
                target, why = start_router(name, cmd, env, port, cpus,
                                           Path(tmp) / f"{router_name}-{workers}.log")
                notes[name] = why if target is not None else f"skipped: {why}"
                if target is None:
                    continue
                assert target.proc is not None
                try:
                    cells += [{**cell, "workers": workers}
                              for cell in measure_target(target, args)]
                finally:
                    stop(target.proc)
    finally:
        stop(stub)
    machine = machine_line(pinning, stub_cpu)
    print(f"machine: {machine}")
    print(f"routes: POST {', '.join(args.routes)}; streaming = {args.chunks} SSE chunks "
          f"{args.chunk_gap_ms} ms apart; {args.duration:.0f} s per cell after "
          f"{args.warmup:.0f} s warm-up\n")
    for name, note in notes.items():
        print(f"- {name}: {note}")
    print()
    print_table(cells)
    print_scaling(cells)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": machine, "chunks": args.chunks, "chunk_gap_ms": args.chunk_gap_ms,
            "duration_s": args.duration, "targets": notes, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
