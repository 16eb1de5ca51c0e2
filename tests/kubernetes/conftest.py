from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from pdfleet.ports import free_port
from tests.kubernetes.fake_apiserver import FakeApiServer
from tests.procs import Process, wait_http_ok

NAMESPACE = "rl"
SELECTORS = {"prefill": "app=sglang,role=prefill", "decode": "app=sglang,role=decode"}


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    server = await FakeApiServer().start()
    yield server
    await server.stop()


class DiscoveringRouter:
    """A real `pdfleet router` process whose fleet config discovers pods through the API
    server `kubeconfig` names (written to a file), beside the static `nodes`."""

    def __init__(self, tmp: Path, kubeconfig: dict[str, Any],
                 nodes: list[dict[str, Any]], **discovery: Any) -> None:
        self.port = free_port()
        kubeconfig_path = tmp / f"kubeconfig-{self.port}.yaml"
        kubeconfig_path.write_text(yaml.safe_dump(kubeconfig))
        config = {
            "router": {"port": self.port, "poll_interval_s": 0.5},
            "nodes": nodes,
            "discovery": {"kubernetes": {"namespace": NAMESPACE,
                                         "kubeconfig": str(kubeconfig_path),
                                         "selectors": SELECTORS, **discovery}},
        }
        self.config_path = tmp / f"router-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process([sys.executable, "-m", "pdfleet", "router", "--config",
                                str(self.config_path)])
        wait_http_ok(f"{self.url}/health", self.process)

    def stop(self) -> int:
        return self.process.stop()


@pytest.fixture
def discovering_router(
    tmp_path: Path, fake_api: FakeApiServer
) -> Iterator[Callable[..., DiscoveringRouter]]:
    started: list[DiscoveringRouter] = []

    def start(nodes: list[dict[str, Any]] | None = None, api: FakeApiServer | None = None,
              **discovery: Any) -> DiscoveringRouter:
        server = api or fake_api
        router = DiscoveringRouter(tmp_path, server.kubeconfig(NAMESPACE),
                                   nodes or [], **discovery)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
