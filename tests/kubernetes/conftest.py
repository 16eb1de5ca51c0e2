from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.kubernetes.fake_apiserver import FakeApiServer


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    server = await FakeApiServer().start()
    yield server
    await server.stop()
