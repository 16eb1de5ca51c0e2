"""update_weights_from_distributed: a trainer process (rank 0, gloo on CPU) broadcasts the
seed-7 weights to two real nodes (ranks 1 and 2), which then serve the seed-7 tokens."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from node.options import NodeOptions
from node.runtime import model_config
from tests.node.conftest import NodeProcess, StartNode, greedy, post_json
from tests.procs import Process, free_port

pytestmark = pytest.mark.timeout(120)

TRAINER = Path(__file__).with_name("refit_trainer.py")
JOIN_TIMEOUT_S = 30
PROMPT = "broadcast weights"
GROUP = "refit"


@pytest.fixture(scope="module")
def nodes(start_node: StartNode) -> list[NodeProcess]:
    return [start_node(), start_node()]


@pytest.fixture(scope="module")
def seed7_node(start_node: StartNode) -> NodeProcess:
    return start_node("--seed", "7")


@pytest.fixture
def trainer_port() -> int:
    return free_port()


@pytest.fixture
def trainer(trainer_port: int) -> Iterator[Process]:
    process = Process([sys.executable, str(TRAINER), "--port", str(trainer_port),
                       "--world-size", "3", "--group-name", GROUP, "--seed", "7",
                       "--timeout-s", str(JOIN_TIMEOUT_S)])
    yield process
    process.stop()


def layout_body(**extra: Any) -> dict[str, Any]:
    layout = model_config(NodeOptions()).layout()
    return {"names": [name for name, _ in layout], "dtypes": ["float32"] * len(layout),
            "shapes": [list(shape) for _, shape in layout], **extra}


def group_body(port: int, rank: int, **extra: Any) -> dict[str, Any]:
    return {"master_address": "127.0.0.1", "master_port": port, "rank_offset": rank,
            "world_size": 3, "group_name": GROUP, "backend": "gloo",
            "timeout_s": JOIN_TIMEOUT_S, **extra}


async def tokens(http: aiohttp.ClientSession, node: NodeProcess) -> list[int]:
    status, reply = await post_json(http, f"{node.url}/generate", greedy(PROMPT))
    assert status == 200, reply
    return reply["output_ids"]


async def test_two_nodes_take_the_trainers_broadcast_and_serve_its_tokens(
    http: aiohttp.ClientSession, nodes: list[NodeProcess], seed7_node: NodeProcess,
    trainer: Process, trainer_port: int,
) -> None:
    wanted = await tokens(http, seed7_node)
    joined = await asyncio.gather(*(
        post_json(http, f"{node.url}/init_weights_update_group", group_body(trainer_port, rank))
        for rank, node in enumerate(nodes, start=1)))
    for rank, (status, reply) in enumerate(joined, start=1):
        assert status == 200, (reply, trainer.output())
        assert reply["rank"] == rank and reply["world_size"] == 3

    status, reply = await post_json(http, f"{nodes[0].url}/init_weights_update_group",
                                    group_body(trainer_port, 1))
    assert status == 409 and "already joined" in reply["message"]

    updated = await asyncio.gather(*(
        post_json(http, f"{node.url}/update_weights_from_distributed",
                  layout_body(group_name=GROUP, weight_version="step-7"))
        for node in nodes))
    for status, reply in updated:
        assert status == 200, (reply, trainer.output())
        assert reply["weight_version"] == "step-7"
    assert await asyncio.to_thread(trainer.proc.wait, JOIN_TIMEOUT_S) == 0
    assert "SENT" in trainer.output()
    for node in nodes:
        assert await tokens(http, node) == wanted
        assert node.info()["weight_version"] == "step-7"
        status, reply = await post_json(http, f"{node.url}/destroy_weights_update_group",
                                        {"group_name": GROUP})
        assert status == 200, reply


@pytest.mark.parametrize(("change", "named"), [
    ({"shapes": [[1, 2]]}, "embed has shape [1, 2], the model needs [258, 256]"),
    ({"names": ["unembed"]}, "no tensor named 'unembed'"),
    ({"dtypes": ["int3"]}, "unknown dtype 'int3'"),
    ({"group_name": "nobody"}, "no weights update group named 'nobody'"),
])
async def test_a_broadcast_that_does_not_fit_is_refused_before_anything_is_received(
    http: aiohttp.ClientSession, nodes: list[NodeProcess], change: dict[str, Any], named: str,
) -> None:
    layout = layout_body()
    body = {key: layout[key][:1] for key in ("names", "dtypes", "shapes")} | change
    before = await tokens(http, nodes[0])
    status, reply = await post_json(http, f"{nodes[0].url}/update_weights_from_distributed",
                                    body)
    assert status == 400 and named in reply["message"]
    assert await tokens(http, nodes[0]) == before


async def test_a_group_whose_trainer_never_comes_fails_within_its_timeout(
    http: aiohttp.ClientSession, nodes: list[NodeProcess]
) -> None:
    status, reply = await post_json(http, f"{nodes[0].url}/init_weights_update_group",
                                    group_body(free_port(), 1, timeout_s=1, group_name="alone"))
    assert status == 504 and "could not join" in reply["message"]
    status, reply = await post_json(http, f"{nodes[0].url}/init_weights_update_group",
                                    {"master_address": "127.0.0.1"})
    assert status == 400 and "master_port" in reply["message"]
