"""Memory release and resume on the cpu backend, over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.node.conftest import NodeProcess, StartNode, greedy
from tests.procs import ROOT, Router

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024


async def post(
    http: aiohttp.ClientSession, node: NodeProcess, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any]:
    async with http.post(f"{node.url}{path}", json=body, **kw) as reply:
        return reply.status, await reply.json()


async def tokens(http: aiohttp.ClientSession, node: NodeProcess) -> list[int]:
    status, reply = await post(http, node, "/generate", greedy("sleep and wake", 24))
    assert status == 200, reply
    return reply["output_ids"]


@pytest.fixture
async def awake(http: aiohttp.ClientSession, mixed_node: NodeProcess) -> Any:
    """The shared node, awake before and after the test."""
    assert mixed_node.info()["released_tags"] == []
    yield mixed_node
    await post(http, mixed_node, "/resume_memory_occupation", {"tags": None})
    assert mixed_node.info()["state"] == "serving"


async def test_release_frees_rss_and_resume_restores_same_tokens(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    before = await tokens(http, awake)
    rss_awake = awake.info()["memory"]["used_bytes"]
    status, released = await post(http, awake, "/release_memory_occupation", {"tags": None})
    assert status == 200, released
    assert released["success"] is True
    assert released["released"] == ["weights", "kv_cache"]
    assert released["released_tags"] == ["weights", "kv_cache"]
    assert released["noop_tags"] == ["cuda_graph", "weights_drafter"]
    assert released["freed_bytes"] > 40 * MIB
    info = awake.info()
    assert rss_awake - info["memory"]["used_bytes"] > 40 * MIB
    assert info["memory"]["regions"]["weights"]["state"] == "released"
    assert info["is_sleeping"] is True

    status, resumed = await post(http, awake, "/resume_memory_occupation", {"tags": None})
    assert status == 200, resumed
    assert resumed["resumed"] == ["weights", "kv_cache"]
    assert resumed["released_tags"] == []
    assert resumed["restored_bytes"] > 40 * MIB
    assert await tokens(http, awake) == before


@pytest.mark.parametrize("body", [None, {}, {"tags": None, "some_router_field": 1}])
async def test_empty_body_and_null_tags_release_all(
    http: aiohttp.ClientSession, awake: NodeProcess, body: Any
) -> None:
    kwargs = {"data": b""} if body is None else {"json": body}
    async with http.post(f"{awake.url}/release_memory_occupation", **kwargs) as reply:
        assert reply.status == 200
        assert (await reply.json())["released_tags"] == ["weights", "kv_cache"]
    async with http.post(f"{awake.url}/resume_memory_occupation", data=b"") as reply:
        assert reply.status == 200
        assert (await reply.json())["released_tags"] == []


@pytest.mark.parametrize(
    ("tags", "phrase"),
    [
        ([], "must not be empty"),
        ("weights", "must be a list"),
        (["weights", "bogus"], "unknown tags"),
    ],
)
@pytest.mark.parametrize("route", ["/release_memory_occupation", "/resume_memory_occupation"])
async def test_bad_tags_are_400(
    http: aiohttp.ClientSession, awake: NodeProcess, route: str, tags: Any, phrase: str
) -> None:
    status, reply = await post(http, awake, route, {"tags": tags})
    assert status == 400
    assert reply["success"] is False
    assert phrase in reply["message"]
    assert awake.info()["released_tags"] == []


async def test_repeated_release_and_resume_are_reported_noops(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    status, first = await post(http, awake, "/release_memory_occupation", {"tags": ["weights"]})
    assert (status, first["released"]) == (200, ["weights"])
    status, second = await post(http, awake, "/release_memory_occupation", {"tags": ["weights"]})
    assert status == 200
    assert second["released"] == [] and second["already_released"] == ["weights"]
    status, kv = await post(http, awake, "/resume_memory_occupation", {"tags": ["kv_cache"]})
    assert status == 200
    assert kv["resumed"] == [] and kv["already_resumed"] == ["kv_cache"]
    assert kv["released_tags"] == ["weights"]
    for _ in range(2):
        status, again = await post(http, awake, "/resume_memory_occupation", {"tags": ["weights"]})
        assert status == 200
    assert again["already_resumed"] == ["weights"] and again["released_tags"] == []
    assert awake.alive()


async def test_tags_without_memory_are_noops(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    status, reply = await post(http, awake, "/release_memory_occupation", {"tags": ["cuda_graph"]})
    assert status == 200
    assert reply["noop_tags"] == ["cuda_graph"] and reply["released_tags"] == []
    status, reply = await post(
        http, awake, "/resume_memory_occupation", {"tags": ["cuda_graph", "weights_drafter"]}
    )
    assert status == 200 and reply["noop_tags"] == ["cuda_graph", "weights_drafter"]
    assert len(await tokens(http, awake)) == 24


async def test_generation_while_asleep_is_503_with_retry_after(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    await post(http, awake, "/release_memory_occupation", {"tags": ["kv_cache"]})
    for method, path, body in [
        ("POST", "/generate", greedy("x")),
        ("POST", "/v1/completions", {"prompt": "x"}),
        ("GET", "/health_generate", None),
    ]:
        async with http.request(method, f"{awake.url}{path}", json=body) as reply:
            assert reply.status == 503, path
            assert reply.headers["Retry-After"].isdigit()
            error = await reply.json()
            if path.startswith("/v1/"):  # the OpenAI routes answer in OpenAI's shape
                error = error["error"]
            assert "sleeping" in error["message"]
    async with http.get(f"{awake.url}/health") as reply:
        assert reply.status == 200


async def test_partial_wake_keeps_generation_closed(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    await post(http, awake, "/release_memory_occupation", {"tags": None})
    status, reply = await post(http, awake, "/resume_memory_occupation", {"tags": ["kv_cache"]})
    assert status == 200 and reply["released_tags"] == ["weights"]
    async with http.get(f"{awake.url}/is_sleeping") as sleeping:
        assert await sleeping.json() == {"is_sleeping": True, "released_tags": ["weights"]}
    status, _ = await post(http, awake, "/generate", greedy("x"))
    assert status == 503
    status, reply = await post(http, awake, "/resume_memory_occupation", {})
    assert status == 200 and reply["resumed"] == ["weights"]
    assert len(await tokens(http, awake)) == 24


async def test_vllm_sleep_and_wake_up_aliases(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    status, reply = await post(http, awake, "/sleep?level=2")
    assert status == 200 and reply["released_tags"] == ["weights", "kv_cache"]
    status, reply = await post(http, awake, "/wake_up?tags=weights")
    assert status == 200 and reply["released_tags"] == ["kv_cache"]
    status, reply = await post(http, awake, "/wake_up?tags=bogus")
    assert status == 400
    status, reply = await post(http, awake, "/wake_up")
    assert status == 200 and reply["resumed"] == ["kv_cache"] and reply["released_tags"] == []
    await post(http, awake, "/sleep?level=1")
    status, reply = await post(http, awake, "/wake_up?tags=weights,kv_cache")
    assert status == 200 and reply["released_tags"] == []
    assert len(await tokens(http, awake)) == 24


async def test_flush_cache(http: aiohttp.ClientSession, awake: NodeProcess) -> None:
    status, reply = await post(http, awake, "/flush_cache")
    assert status == 200 and reply["success"] is True
    assert len(await tokens(http, awake)) == 24


async def test_disabled_backend_fails_closed(
    http: aiohttp.ClientSession, start_node: StartNode
) -> None:
    node = start_node("--memory-backend", "none")
    assert node.info()["backend"] == "none"
    for path in ["/release_memory_occupation", "/resume_memory_occupation", "/sleep", "/wake_up"]:
        status, reply = await post(http, node, path, {})
        assert status == 503, path
        assert reply["success"] is False and "disabled" in reply["message"]
    assert node.info()["released_tags"] == []
    assert len(await tokens(http, node)) == 24


async def test_admin_token_guards_state_changes(
    http: aiohttp.ClientSession, start_node: StartNode
) -> None:
    node = start_node(env={"PDFLEET_ADMIN_TOKEN": "s3cret"})
    for path in [
        "/release_memory_occupation",
        "/resume_memory_occupation",
        "/sleep",
        "/wake_up",
        "/flush_cache",
    ]:
        for headers in [{}, {"Authorization": "Bearer wrong"}]:
            status, reply = await post(http, node, path, {}, headers=headers)
            assert status == 401, (path, headers)
    assert node.info()["released_tags"] == []
    good = {"Authorization": "Bearer s3cret"}
    status, reply = await post(http, node, "/release_memory_occupation", {}, headers=good)
    assert status == 200 and reply["released_tags"] == ["weights", "kv_cache"]
    status, reply = await post(http, node, "/resume_memory_occupation", {}, headers=good)
    assert status == 200 and reply["released_tags"] == []


async def test_each_cycle_reports_the_released_regions_bytes_beside_the_measured_change(
    http: aiohttp.ClientSession, awake: NodeProcess
) -> None:
    weights = awake.info()["memory"]["regions"]["weights"]["bytes"]
    for _ in range(3):  # after the first cycle the allocator may keep or return pages late
        status, released = await post(http, awake, "/release_memory_occupation",
                                      {"tags": ["weights"]})
        assert status == 200, released
        assert released["released_bytes"] == weights
        assert isinstance(released["freed_bytes"], int)
        status, resumed = await post(http, awake, "/resume_memory_occupation",
                                     {"tags": ["weights"]})
        assert status == 200, resumed
        assert resumed["resumed_bytes"] == weights
        assert isinstance(resumed["restored_bytes"], int)
    await post(http, awake, "/release_memory_occupation", {"tags": ["weights"]})
    status, repeat = await post(http, awake, "/release_memory_occupation", {"tags": ["weights"]})
    assert repeat["already_released"] == ["weights"] and repeat["released_bytes"] == 0


def test_pdfleet_sleep_shows_released_bytes_and_the_measured_change_apart(
    awake: NodeProcess, tmp_path: Path
) -> None:
    weights = awake.info()["memory"]["regions"]["weights"]["bytes"]
    router = Router(tmp_path, [{"url": awake.url, "role": "mixed"}])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pdfleet", "sleep", "--tags", "weights", "--router",
             router.url], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "COLUMNS": "200"})
    finally:
        router.stop()
    assert done.returncode == 0, done.stderr
    assert "released / resumed" in done.stdout and "measured change" in done.stdout
    [row] = [line for line in done.stdout.splitlines() if awake.url.removeprefix("http://")
             in line]
    assert f"{weights / MIB:.2f} MiB" in row
