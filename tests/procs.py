"""Starting and stopping the real processes tests run against: routers, nodes, stub nodes."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from pdfleet.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
STUB_NODES = Path(__file__).resolve().parent / "stubs" / "stub_nodes.py"


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    return free_port()


class Process:
    """A child process in its own process group; its output is kept for error messages
    unless `stdout` says where it goes."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 stdout: int | None = None, cwd: Path = ROOT) -> None:
        self.args = args
        self.log = tempfile.TemporaryFile() if stdout is None else None
        self.proc = subprocess.Popen(
            args, cwd=cwd, env={**os.environ, **(env or {})},
            stdout=self.log if self.log is not None else stdout,
            stderr=subprocess.STDOUT if self.log is not None else None,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first line it prints (its stdout a pipe) that starts with `prefix`."""
        out = self.proc.stdout
        assert out is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([out], [], [], left)
            line = out.readline().decode(errors="replace") if ready else ""
            if line.startswith(prefix):
                return line
            if ready and not line:
                raise RuntimeError(f"{self.args} exited with {self.proc.wait()} before "
                                   f"printing a line starting {prefix!r}")
        raise TimeoutError(f"{self.args} printed no line starting {prefix!r} in {timeout} s")

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        return self.proc.returncode


def wait_http_ok(url: str, proc: Process, timeout: float = 30) -> None:
    """Poll `url` until it answers 200, the process exits, or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(
                f"{proc.args} exited with {proc.proc.returncode}:\n{proc.output()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)  # polling interval for readiness, not synchronization
    raise TimeoutError(f"{url} not ready after {timeout}s: {last}\n{proc.output()}")


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 10) -> None:
    """Poll `check` until it holds: a bounded wait for another process to act."""
    async with asyncio.timeout(within_s):
        while not await check():
            await asyncio.sleep(0.02)


def start_cpu_node(role: str, *extra: str) -> tuple[Process, str]:
    """A real `pdfleet node` process on CPU (tiny model) on a free port, and its URL."""
    port = free_port()
    node = Process([sys.executable, "-m", "node", "--role", role, "--port", str(port),
                    "--device", "cpu", "--memory-backend", "cpu", *extra])
    return node, f"http://127.0.0.1:{port}"


class StubNodes:
    """A stub-node process serving one port per behaviour."""

    def __init__(self, behaviors: list[dict[str, Any]], timeout: float = 30) -> None:
        self.process = Process(
            [sys.executable, str(STUB_NODES), "--spec", json.dumps(behaviors)],
            stdout=subprocess.PIPE,
        )
        try:
            line = self.process.wait_for_line("READY ", timeout)
        except (RuntimeError, TimeoutError):
            self.process.stop()
            raise
        self.ports: list[int] = json.loads(line[6:])["ports"]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.ports]

    def stop(self) -> None:
        self.process.stop()


class Router:
    """A real `pdfleet router` process on a free port (with `workers` > 1, the supervisor of
    that many router processes)."""

    def __init__(self, tmp: Path, nodes: list[dict[str, Any]], env: dict[str, str] | None = None,
                 workers: int = 1, **settings: Any) -> None:
        self.port = free_port()
        config = {"router": {"port": self.port, "poll_interval_s": 0.5, **settings},
                  "nodes": nodes}
        self.config_path = tmp / f"router-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process(
            [sys.executable, "-m", "pdfleet", "router", "--config", str(self.config_path),
             "--workers", str(workers)],
            env=env,
        )
        wait_http_ok(f"{self.url}/health", self.process)

    def stop(self) -> int:
        return self.process.stop()
