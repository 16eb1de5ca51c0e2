from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.procs import Router, StubNodes


@pytest.fixture
def stub_nodes() -> Iterator[Callable[..., StubNodes]]:
    started: list[StubNodes] = []

    def start(behaviors: list[dict[str, Any]]) -> StubNodes:
        stubs = StubNodes(behaviors)
        started.append(stubs)
        return stubs

    yield start
    for stubs in started:
        stubs.stop()


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Callable[..., Router]]:
    started: list[Router] = []

    def start(nodes: list[dict[str, Any]], **kwargs: Any) -> Router:
        r = Router(tmp_path, nodes, **kwargs)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session
