"""Per-process memory on a shared GPU: two nodes on one device, released together
through the router, each report only their own bytes, read per process through NVML."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
import torch

from node.memory.meter import PROCESS_GPU
from tests.node.conftest import NodeProcess, launch_node
from tests.procs import Router

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

MARGIN = 256 << 20  # allocator and context slack a release may return beyond its regions
CUDA_NODE = ("--device", "cuda", "--memory-backend", "torch_memory_saver",
             "--model-size", "2g", "--kv-cache-tokens", "16384")


def region_bytes(node: NodeProcess) -> int:
    return sum(r["bytes"] for r in node.info()["memory"]["regions"].values())


async def test_nodes_sharing_a_gpu_each_report_only_their_own_freed_and_restored_bytes(
    router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    nodes = [launch_node(*CUDA_NODE)]
    try:
        nodes.append(launch_node(*CUDA_NODE))
        await check_own_bytes(nodes, router, http)
    finally:
        for node in nodes:
            node.stop()


async def check_own_bytes(
    nodes: list[NodeProcess], router: Callable[..., Router], http: aiohttp.ClientSession
) -> None:
    own = {n.url: region_bytes(n) for n in nodes}
    for node in nodes:
        memory = node.info()["memory"]
        assert memory["measured_as"] == PROCESS_GPU
        assert own[node.url] <= memory["used_bytes"] < memory["total_bytes"]
    r = router([{"url": n.url, "role": "mixed"} for n in nodes])
    results: dict[str, Any] = {}
    for operation, field in (("release_memory_occupation", "freed_bytes"),
                             ("resume_memory_occupation", "restored_bytes")):
        async with http.post(f"{r.url}/{operation}", json={"tags": None}) as resp:
            assert resp.status == 200
            reply = await resp.json()
        for entry in reply["nodes"]:
            measured = entry["result"][field]
            results.setdefault(entry["server"], {"region_bytes": own[entry["server"]]})
            results[entry["server"]][field] = measured
            assert 0.9 * own[entry["server"]] <= measured <= own[entry["server"]] + MARGIN
    print("per-node bytes:", json.dumps(results))  # the numbers the README quotes
