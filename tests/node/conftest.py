"""Real node processes for the node tests: start on a free port, wait for /health, stop.

Nodes are started as `python -m node ...` with the test interpreter (tests/procs.py starts,
waits for and stops every process the tests run).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.procs import Process, eventually, free_port, wait_http_ok

STARTUP_DEADLINE_S = 60.0


@dataclass
class NodeProcess:
    port: int
    bootstrap_port: int | None
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process.alive()

    def output(self) -> str:
        return self.process.output()

    def info(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/get_server_info", timeout=5) as reply:
            return json.loads(reply.read())

    def stop(self) -> None:
        self.process.stop()


def launch_node(*args: str, role: str = "mixed", env: dict[str, str] | None = None
                ) -> NodeProcess:
    """A `python -m node` process on a free port, returned once it answers /health."""
    port = free_port()
    bootstrap = free_port() if role == "prefill" else None
    command = [sys.executable, "-m", "node", "--role", role, "--port", str(port), *args]
    if bootstrap is not None:
        command += ["--bootstrap-port", str(bootstrap)]
    node = NodeProcess(port, bootstrap, Process(command, env=env))
    try:
        wait_http_ok(f"{node.url}/health", node.process, timeout=STARTUP_DEADLINE_S)
    except Exception:
        node.stop()
        raise
    return node


StartNode = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def start_node() -> Iterator[StartNode]:
    """Start nodes that live until the end of the test module."""
    started: list[NodeProcess] = []

    def start(*args: str, role: str = "mixed", env: dict[str, str] | None = None) -> NodeProcess:
        node = launch_node(*args, role=role, env=env)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


@pytest.fixture(scope="module")
def mixed_node(start_node: StartNode) -> NodeProcess:
    return start_node()


@pytest.fixture(scope="module")
def prefill(start_node: StartNode) -> NodeProcess:
    """A prefill node, with `decode` its pair (a module may define its own instead)."""
    return start_node(role="prefill")


@pytest.fixture(scope="module")
def decode(start_node: StartNode) -> NodeProcess:
    return start_node("--kv-handoff-timeout-s", "40", role="decode")


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
    info: dict[str, Any] = {}

    async def holds() -> bool:
        nonlocal info
        async with http.get(f"{node.url}/get_server_info") as reply:
            info = await reply.json()
        return predicate(info)

    await eventually(holds, timeout_s)
    return info


def save_weights(path: Path, *args: str) -> Path:
    """The weights `pdfleet node *args` would serve, written by `--save-weights`."""
    command = [sys.executable, "-m", "node", *args, "--save-weights", str(path)]
    done = subprocess.run(command, capture_output=True, timeout=STARTUP_DEADLINE_S, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return path


@pytest.fixture(scope="module")
def seed7_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's weights as a `--seed 7` node serves them."""
    return save_weights(tmp_path_factory.mktemp("weights") / "seed7.safetensors", "--seed", "7")


async def post_json(
    http: Any, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """POST `body` as JSON; the status and the JSON reply."""
    async with http.post(url, json=body, headers=headers) as reply:
        return reply.status, await reply.json()
