from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.kubernetes.discovering_router import NAMESPACE, DiscoveringRouter
from tests.kubernetes.fake_apiserver import FakeApiServer


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    server = await FakeApiServer().start()
    yield server
    await server.stop()


@pytest.fixture
def discovering_router(
    tmp_path: Path, fake_api: FakeApiServer
) -> Iterator[Callable[..., DiscoveringRouter]]:
    started: list[DiscoveringRouter] = []

    def start(nodes: list[dict[str, Any]] | None = None, api: FakeApiServer | None = None,
              workers: int = 1, **discovery: Any) -> DiscoveringRouter:
        server = api or fake_api
        router = DiscoveringRouter(tmp_path, server.kubeconfig(NAMESPACE), nodes or [],
                                   workers=workers, **discovery)
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
