"""Real node processes for the node tests: start on a free port, wait for /health, stop.

Nodes are started as `python -m node ...` with the test interpreter and stopped with
SIGTERM, then SIGKILL if they do not exit in time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

STARTUP_DEADLINE_S = 60.0
STOP_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NodeProcess:
    args: list[str]
    port: int
    bootstrap_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NodeProcess:
        command = [sys.executable, "-m", "node", "--port", str(self.port), *self.args]
        if self.bootstrap_port is not None:
            command += ["--bootstrap-port", str(self.bootstrap_port)]
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)  # readiness polling, bounded by the deadline
        raise RuntimeError(f"node not ready within {STARTUP_DEADLINE_S}s:\n{self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/get_server_info", timeout=5) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_DEADLINE_S)


StartNode = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def start_node() -> Iterator[StartNode]:
    """Start nodes that live until the end of the test module."""
    started: list[NodeProcess] = []

    def start(*args: str, role: str = "mixed", env: dict[str, str] | None = None) -> NodeProcess:
        bootstrap = free_port() if role == "prefill" else None
        node = NodeProcess(
            args=["--role", role, *args], port=free_port(), bootstrap_port=bootstrap, env=env or {}
        )
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def mixed_node(start_node: StartNode) -> NodeProcess:
    return start_node()


@pytest.fixture
async def http() -> Any:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


def greedy(prompt: str, max_new_tokens: int = 16, **extra: Any) -> dict[str, Any]:
    """A /generate body for a deterministic greedy generation."""
    return {
        "text": prompt,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
        **extra,
    }


async def sse_events(reply: Any) -> list[Any]:
    """Every `data:` event of an SSE reply, JSON-decoded, `[DONE]` as the string."""
    events: list[Any] = []
    async for line in reply.content:
        text = line.decode().strip()
        if text.startswith("data: "):
            data = text.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def wait_for_info(
    http: Any,
    node: NodeProcess,
    predicate: Callable[[dict[str, Any]], bool],
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Poll /get_server_info until `predicate` holds (bounded by `timeout_s`)."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        async with http.get(f"{node.url}/get_server_info") as reply:
            info = await reply.json()
        if predicate(info):
            return info
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout_s}s; last info: {info}")
        await asyncio.sleep(0.05)
