"""update_weights_from_disk on a real CUDA device with torch_memory_saver (skipped without
one): a 1 GiB bf16 model crosses several staging chunks, lands in place, and survives a
release and resume of its weights."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
import torch

from tests.node.conftest import NodeProcess, StartNode, greedy, post_json, save_weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA_1G = ("--device", "cuda", "--memory-backend", "torch_memory_saver", "--model-size", "1g")


@pytest.fixture(scope="module")
def seed7_cuda_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(tmp_path_factory.mktemp("weights") / "seed7-1g.safetensors",
                        *CUDA_1G, "--seed", "7")


async def tokens(http: aiohttp.ClientSession, node: NodeProcess) -> list[int]:
    status, reply = await post_json(http, f"{node.url}/generate", greedy("on the device"))
    assert status == 200, reply
    return reply["output_ids"]


async def test_a_cuda_node_updated_from_disk_serves_the_seed7_tokens_through_a_sleep(
    http: aiohttp.ClientSession, start_node: StartNode, seed7_cuda_weights: Path
) -> None:
    node = start_node(*CUDA_1G)
    wanted = await tokens(http, start_node(*CUDA_1G, "--seed", "7"))
    status, report = await post_json(http, f"{node.url}/update_weights_from_disk",
                                     {"model_path": str(seed7_cuda_weights),
                                      "weight_version": "v7"})
    assert status == 200, report
    assert report["bytes"] == node.info()["model"]["weight_bytes"]
    assert await tokens(http, node) == wanted
    for route in ("release_memory_occupation", "resume_memory_occupation"):
        assert (await post_json(http, f"{node.url}/{route}", {}))[0] == 200
    assert await tokens(http, node) == wanted
