"""The torch_memory_saver backend on a real CUDA device (skipped without one)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import aiohttp
import pytest
import torch

from tests.node.conftest import NodeProcess, StartNode, greedy

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(180),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GIB = 1024**3

# Holds all but `leave` bytes of the device's free memory until its stdin closes.
_HOG = """
import sys, torch
leave = int(sys.argv[1])
free, _ = torch.cuda.mem_get_info()
hog = torch.empty(max(free - leave, 0), dtype=torch.uint8, device="cuda")
print("ready", flush=True)
sys.stdin.read()
"""


def hold_device_memory(leave_bytes: int) -> subprocess.Popen[str]:
    """A separate process that holds all but `leave_bytes` of the free device memory."""
    hog = subprocess.Popen(
        [sys.executable, "-c", _HOG, str(leave_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert hog.stdout is not None and hog.stdout.readline().strip() == "ready"
    return hog


@pytest.fixture(scope="module")
def cuda_node(start_node: StartNode) -> NodeProcess:
    return start_node(
        "--device", "cuda", "--memory-backend", "torch_memory_saver", "--model-size", "1g",
        "--kv-cache-tokens", "16384",
    )  # fmt: skip


async def post(
    http: aiohttp.ClientSession, node: NodeProcess, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.post(f"{node.url}{path}", json=body) as reply:
        return reply.status, await reply.json()


async def tokens(http: aiohttp.ClientSession, node: NodeProcess) -> list[int]:
    status, reply = await post(http, node, "/generate", greedy("gpu sleep", 16))
    assert status == 200, reply
    return reply["output_ids"]


async def test_release_frees_the_regions_and_wake_restores_tokens(
    http: aiohttp.ClientSession, cuda_node: NodeProcess
) -> None:
    before = await tokens(http, cuda_node)
    regions = cuda_node.info()["memory"]["regions"]
    region_bytes = regions["weights"]["bytes"] + regions["kv_cache"]["bytes"]
    assert region_bytes > GIB
    status, released = await post(http, cuda_node, "/release_memory_occupation", {"tags": None})
    assert status == 200, released
    assert released["freed_bytes"] >= 0.99 * region_bytes
    status, resumed = await post(http, cuda_node, "/resume_memory_occupation", {"tags": None})
    assert status == 200, resumed
    assert resumed["restored_bytes"] >= 0.99 * region_bytes
    assert await tokens(http, cuda_node) == before


async def test_double_release_and_resume_are_noops(
    http: aiohttp.ClientSession, cuda_node: NodeProcess
) -> None:
    for expected in (["weights", "kv_cache"], []):
        status, reply = await post(http, cuda_node, "/release_memory_occupation", {})
        assert status == 200 and reply["released"] == expected
    for expected in (["weights", "kv_cache"], []):
        status, reply = await post(
            http, cuda_node, "/resume_memory_occupation", {"tags": ["weights", "kv_cache"]}
        )
        assert status == 200 and reply["resumed"] == expected
    assert cuda_node.alive()
    assert len(await tokens(http, cuda_node)) == 16


async def test_resume_without_room_is_507_and_node_stays_asleep(
    http: aiohttp.ClientSession, cuda_node: NodeProcess
) -> None:
    before = await tokens(http, cuda_node)
    assert (await post(http, cuda_node, "/release_memory_occupation", {}))[0] == 200
    hog = hold_device_memory(256 * 1024 * 1024)
    try:
        status, reply = await post(http, cuda_node, "/resume_memory_occupation", {})
        assert status == 507, reply
        assert reply["needed_bytes"] > reply["free_bytes"]
        assert cuda_node.alive()
        assert cuda_node.info()["released_tags"] == ["weights", "kv_cache"]
    finally:
        hog.communicate(timeout=30)
    status, reply = await post(http, cuda_node, "/resume_memory_occupation", {})
    assert status == 200, reply
    assert await tokens(http, cuda_node) == before
