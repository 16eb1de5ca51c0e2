"""Generate-proxy benchmark (docs/benchmarks.md): requests/s, p50/p99 latency and router CPU
per request for OpenAI's `/v1/completions` and SGLang's `/generate` straight to a stub decode
node, through pdfleet, and through sglang-router and vllm-router in PD mode, on the same stub
nodes, in one run.

    python scripts/bench_proxy.py [--duration 5] [--concurrency 32 128]
        [--routes /v1/completions /generate] [--json out.json]

Each router runs pinned to CPU 1; `--workers 1 2 4` measures pdfleet once per worker count,
each pinned to CPUs 1..N (N + 2 CPUs needed). The CPU plan is made from the CPUs this process
may use, before anything is pinned: the stub nodes (scripts/bench_stub.py, `--stub-procs`
processes serving the same ports) take the CPUs after the largest router's, the load generator
(`--load-procs` processes, each with its share of the concurrency) the rest and CPU 0, where
this process coordinates them; by default the stubs get 3 of every 8 spare CPUs (16 CPUs with
`--workers 8`: router 1-8, stubs 9-11, load 12-15 and 0). On a 2-CPU machine everything but
the router runs on CPU 0, one process each. The load generator is a raw asyncio HTTP/1.1
client (uvloop, httptools) keeping one connection per concurrent request, so the stub and the
client cost little next to the routers; req/s, errors and latency percentiles are over every
load process's samples. Router CPU is the router process tree's user+system time over the
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
import multiprocessing
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
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, cast

import httptools
import psutil
import uvloop
import yaml

ROOT = Path(__file__).resolve().parent.parent
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
    finished: float = 0.0  # time.monotonic() when the last request of the phase ended


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

    async def run(self, end: float) -> Phase:
        """Requests back to back on every connection, until `end` (time.monotonic())."""
        phase = Phase()
        await asyncio.gather(*(self._worker(i, end, phase) for i in range(self.concurrency)))
        phase.finished = time.monotonic()
        return phase

    async def _worker(self, index: int, end: float, phase: Phase) -> None:
        while (started := time.monotonic()) < end:
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
            phase.latencies_ms.append((time.monotonic() - started) * 1000)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 \
        else (values[0] if values else float("nan"))


@dataclass(frozen=True)
class Share:
    """One load process's part of a cell: its connections and how long it measures."""
    port: int
    route: str
    stream: bool
    concurrency: int
    seconds: float


async def run_share(share: Share, pipe: Pipe) -> Phase:
    """Open the share's connections, say so, then warm up until the window's start that the
    parent sends back and measure from there: every load process measures the same window."""
    load = LoadGenerator(share.port, share.route, share.stream, share.concurrency)
    try:
        await load.open()
        pipe.send(None)
        window: float = pipe.recv()
        await load.run(window)
        return await load.run(window + share.seconds)
    finally:
        load.close()


def load_process(cpu: int | None, pipe: Pipe) -> None:
    """A load generator process: runs the shares it is sent until it is sent None."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    while (share := pipe.recv()) is not None:
        try:
            pipe.send(uvloop.run(run_share(share, pipe)))
        except OSError as exc:
            pipe.send(f"the load generator could not connect to port {share.port}: {exc}")


class LoadProcesses:
    """The load generator, one process per entry of `cpus` (None: not pinned), each taking its
    share of a cell's concurrency; `measure` runs a cell on all of them and merges their
    samples."""

    def __init__(self, cpus: list[int | None]) -> None:
        context = multiprocessing.get_context("fork")  # no event loop runs here between cells
        self.pipes: list[Pipe] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        for cpu in cpus:
            ours, theirs = context.Pipe()
            proc = context.Process(target=load_process, args=(cpu, theirs), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(ours)
            self.procs.append(proc)

    def close(self) -> None:
        for proc in self.procs:  # nothing to flush: also ends one stuck in a failed cell
            proc.kill()
            proc.join()

    def measure(self, port: int, route: str, stream: bool, concurrency: int, warmup_s: float,
                seconds: float, router_pid: int | None) -> dict[str, Any]:
        count = len(self.pipes)
        shares = [(pipe, concurrency // count + (i < concurrency % count))
                  for i, pipe in enumerate(self.pipes)]
        pipes = [pipe for pipe, share in shares if share]
        for pipe, share in shares:
            if share:
                pipe.send(Share(port, route, stream, share, seconds))
        failures = [failure for failure in (pipe.recv() for pipe in pipes) if failure]
        if failures:
            raise SystemExit(failures[0])
        window = time.monotonic() + warmup_s
        for pipe in pipes:
            pipe.send(window)
        time.sleep(max(0.0, window - time.monotonic()))  # read the router's CPU at the start
        cpu_before = cpu_seconds(router_pid) if router_pid else 0.0
        phases: list[Phase] = [pipe.recv() for pipe in pipes]
        cpu = cpu_seconds(router_pid) - cpu_before if router_pid else None
        elapsed = max(phase.finished for phase in phases) - window
        latencies = [ms for phase in phases for ms in phase.latencies_ms]
        served = len(latencies)
        return {
            "rps": round(served / elapsed, 1),
            "p50_ms": round(percentile(latencies, 50), 2),
            "p99_ms": round(percentile(latencies, 99), 2),
            "router_cpu_us_per_req": round(cpu / served * 1e6, 1) if cpu is not None and served
            else None,
            "router_cores": round(cpu / elapsed, 2) if cpu is not None else None,
            "requests": served,
            "errors": sum(phase.errors for phase in phases),
        }


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None  # None: straight to the node

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def start_stub(chunks: int, gap_ms: float, cpus: set[int] | None,
               processes: int) -> tuple[subprocess.Popen[bytes], int, int]:
    """The stub nodes, `processes` processes spread over `cpus`, and their two ports."""
    proc = spawn([sys.executable, "scripts/bench_stub.py", "--chunks", str(chunks),
                  "--chunk-gap-ms", str(gap_ms), "--processes", str(processes)], cpus,
                 stdout=subprocess.PIPE)
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


def serving_workers(port: int, workers: int) -> bool:
    """Whether the router serves `/v1/completions`, from each of its `workers` processes:
    connections made while some worker does not listen yet would all stay on the others."""
    seen: set[str | None] = set()
    for _ in range(20 * workers):  # fresh connections; the kernel spreads them by hash
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(PROMPT_BODY).encode(),
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                if resp.status != 200:
                    return False
                seen.add(resp.headers.get("X-Pdfleet-Worker"))
        except (urllib.error.URLError, OSError):
            return False
        if len(seen) == workers:
            return True
    return False


def start_router(name: str, args: list[str], env: dict[str, str], port: int,
                 cpu: int | set[int] | None, log: Path, workers: int = 1
                 ) -> tuple[Target | None, str]:
    """The running router, or None and why not."""
    with log.open("wb") as out:
        proc = spawn(args, cpu, env, stdout=out.fileno())
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            return None, f"exited with code {proc.returncode}: {' / '.join(tail)}"
        if serving_workers(port, workers):
            return Target(name, port, proc), "ok"
        time.sleep(0.2)  # readiness polling, bounded by the deadline
    stop(proc)
    return None, f"did not serve /v1/completions within {READY_TIMEOUT_S:.0f} s"


def measure_target(target: Target, load: LoadProcesses,
                   args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every cell (mode x concurrency) for one target, one router running at a time."""
    cells = []
    for route in args.routes:
        for stream in (False, True):
            for concurrency in args.concurrency:
                cell = load.measure(target.port, route, stream, concurrency, args.warmup,
                                    args.duration, target.pid)
                mode = "stream" if stream else "unary"
                cells.append({"target": target.name, "route": route, "mode": mode,
                              "concurrency": concurrency, **cell})
                print(f"  {target.name} {route} {mode} c={concurrency}: {cell['rps']:.0f} "
                      f"req/s, p50 {cell['p50_ms']} ms", file=sys.stderr, flush=True)
    return cells


def cpu_list(cpus: list[int]) -> str:
    return ", ".join(map(str, cpus))


@dataclass(frozen=True)
class CpuPlan:
    """Where each side runs, made from the CPUs this process may use before any is pinned.
    `home` None: one CPU, nothing pinned. The processes of one side take that side's CPUs in
    turn (several share one where there are more processes than CPUs)."""
    home: int | None  # this process, which only coordinates the load processes
    router: list[int]  # pdfleet --workers N: the first N
    stubs: list[int]
    load: list[int]
    stub_procs: int
    load_procs: int

    @classmethod
    def make(cls, available: list[int], most_workers: int, stub_procs: int | None,
             load_procs: int | None) -> CpuPlan:
        """Router on the CPUs after the first; the stubs take 3 of every 8 CPUs left (the
        first one included), at least one, the load generator the rest and the first one. A
        2-CPU machine has none left: the stubs and the load generator share the first."""
        if len(available) < 2:
            return cls(None, [], [], [], stub_procs or 1, load_procs or 1)
        home, router = available[0], available[1:1 + most_workers]
        spare = available[1 + most_workers:]
        stub_count = stub_procs or max(1, (len(spare) + 1) * 3 // 8)
        load = [*spare[stub_count:], home]
        load_count = load_procs or len(load)
        return cls(home, router, spare[:stub_count] or [home], load[:load_count], stub_count,
                   load_count)

    def router_cpus(self, workers: int) -> set[int] | None:
        return set(self.router[:workers]) if self.router else None

    def load_cpus(self) -> list[int | None]:
        return [self.load[i % len(self.load)] if self.load else None
                for i in range(self.load_procs)]

    def processes_line(self) -> str:
        def processes(count: int, cpus: list[int]) -> str:
            where = f" on CPUs {cpu_list(cpus)}" if self.home is not None else ", not pinned"
            return f"{count} process{'es' if count > 1 else ''}{where}"

        home = f", coordinated from CPU {self.home}" if self.home is not None else ""
        return (f"load generator {processes(self.load_procs, self.load)}{home}; stubs "
                f"{processes(self.stub_procs, self.stubs)}")


def machine_line(plan: CpuPlan) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = (f"routers pinned to CPU {plan.router[0]} (pdfleet --workers N: CPUs "
             f"{plan.router[0]} to N), load generator on CPUs {cpu_list(plan.load)}, stubs "
             f"on CPUs {cpu_list(plan.stubs)}"
             if plan.home is not None else "no pinning (one CPU)")
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
                             "CPUs from CPU 1; the stubs and load generator get the CPUs after "
                             "the largest's")
    parser.add_argument("--stub-procs", type=int,
                        help="stub node processes (default: 3 of every 8 spare CPUs, at least 1)")
    parser.add_argument("--load-procs", type=int,
                        help="load generator processes (default: one per CPU the stubs leave)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    for flag in ("stub_procs", "load_procs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")

    available = sorted(os.sched_getaffinity(0))
    most = max(args.workers)
    if most > 1 and len(available) < most + 2:
        raise SystemExit(f"--workers {most} needs {most + 2} CPUs: the load generator's, "
                         f"{most} for the router and the stubs'")
    plan = CpuPlan.make(available, most, args.stub_procs, args.load_procs)
    if plan.home is not None:
        os.sched_setaffinity(0, {plan.home})
    stub, prefill_port, decode_port = start_stub(
        args.chunks, args.chunk_gap_ms, set(plan.stubs) or None, plan.stub_procs)
    prefill, decode = f"http://127.0.0.1:{prefill_port}", f"http://127.0.0.1:{decode_port}"
    notes: dict[str, str] = {"direct": "straight to the decode stub, no router"}
    cells: list[dict[str, Any]] = []
    load = LoadProcesses(plan.load_cpus())
    try:
        cells += measure_target(Target("direct", decode_port), load, args)
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
                target, why = start_router(name, cmd, env, port, plan.router_cpus(workers),
                                           Path(tmp) / f"{router_name}-{workers}.log", workers)
                notes[name] = why if target is not None else f"skipped: {why}"
                if target is None:
                    continue
                assert target.proc is not None
                try:
                    cells += [{**cell, "workers": workers}
                              for cell in measure_target(target, load, args)]
                finally:
                    stop(target.proc)
    finally:
        load.close()
        stop(stub)
    machine = machine_line(plan)
    print(f"machine: {machine}")
    print(f"processes: {plan.processes_line()}")
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
            "machine": machine, "processes": plan.processes_line(), "chunks": args.chunks,
            "chunk_gap_ms": args.chunk_gap_ms,
            "duration_s": args.duration, "targets": notes, "cells": cells}, indent=2))


if __name__ == "__main__":
    main()
