"""A real fleet for the observability tests: a prefill and a decode pdfleet node on CPU."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.procs import Process, free_port, wait_http_ok


@dataclass
class RealNode:
    url: str
    role: str
    process: Process
    bootstrap_port: int | None = None

    def spec(self) -> dict:
        spec: dict = {"url": self.url, "role": self.role}
        if self.bootstrap_port is not None:
            spec["bootstrap_port"] = self.bootstrap_port
        return spec


def start_node(role: str, env: dict[str, str] | None = None) -> RealNode:
    port = free_port()
    bootstrap = free_port() if role == "prefill" else None
    extra = ["--bootstrap-port", str(bootstrap)] if bootstrap is not None else []
    process = Process([sys.executable, "-m", "node", "--role", role, "--port", str(port),
                       "--device", "cpu", "--memory-backend", "cpu", *extra], env=env)
    return RealNode(f"http://127.0.0.1:{port}", role, process, bootstrap)


def start_fleet(env: dict[str, str] | None = None) -> list[RealNode]:
    nodes = [start_node("prefill", env), start_node("decode", env)]
    try:
        for node in nodes:
            wait_http_ok(f"{node.url}/health", node.process, timeout=90)
    except BaseException:
        for node in nodes:
            node.process.stop()
        raise
    return nodes


@pytest.fixture(scope="module")
def pd_nodes() -> Iterator[list[RealNode]]:
    nodes = start_fleet()
    yield nodes
    for node in nodes:
        node.process.stop()
