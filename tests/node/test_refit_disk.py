"""update_weights_from_disk on real nodes: the same weights give the same tokens, the version
is reported everywhere a reply names it, and every refusal leaves the old weights serving."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from safetensors.torch import load_file, save_file

from pdfleet.vocabulary import WEIGHT_VERSION_HEADER
from tests.node.conftest import (
    NodeProcess,
    StartNode,
    greedy,
    post_json,
    save_weights,
    sse_events,
)

pytestmark = pytest.mark.timeout(120)

PROMPT = "the same weights give the same tokens"


@pytest.fixture(scope="module")
def node(start_node: StartNode) -> NodeProcess:
    """Starts at seed 0; tests update it."""
    return start_node("--memory-backend", "cpu")


@pytest.fixture(scope="module")
def seed7_node(start_node: StartNode) -> NodeProcess:
    return start_node("--seed", "7")


async def tokens(http: aiohttp.ClientSession, node: NodeProcess) -> list[int]:
    status, reply = await post_json(http, f"{node.url}/generate", greedy(PROMPT))
    assert status == 200, reply
    return reply["output_ids"]


async def version(http: aiohttp.ClientSession, node: NodeProcess) -> str | None:
    async with http.get(f"{node.url}/get_weight_version") as reply:
        return (await reply.json())["weight_version"]


async def update(http: aiohttp.ClientSession, node: NodeProcess, **body: Any) -> tuple[int, Any]:
    return await post_json(http, f"{node.url}/update_weights_from_disk", body)


async def test_an_update_to_seed7_weights_serves_the_seed7_nodes_tokens(
    http: aiohttp.ClientSession, node: NodeProcess, seed7_node: NodeProcess, seed7_weights: Path
) -> None:
    wanted = await tokens(http, seed7_node)
    assert await tokens(http, node) != wanted
    status, reply = await update(http, node, model_path=str(seed7_weights), weight_version="v7")
    assert status == 200, reply
    assert reply["success"] and reply["weight_version"] == "v7"
    assert reply["bytes"] == node.info()["model"]["weight_bytes"]
    assert await tokens(http, node) == wanted
    assert await version(http, node) == "v7"
    assert node.info()["weight_version"] == "v7"
    async with http.get(f"{node.url}/model_info") as info:
        assert (await info.json())["weight_version"] == "v7"


async def test_the_update_survives_a_sleep_and_wake_cycle(
    http: aiohttp.ClientSession, node: NodeProcess, seed7_node: NodeProcess, seed7_weights: Path
) -> None:
    status, reply = await update(http, node, model_path=str(seed7_weights), weight_version="v7")
    assert status == 200, reply
    assert (await post_json(http, f"{node.url}/release_memory_occupation", {}))[0] == 200
    assert (await post_json(http, f"{node.url}/resume_memory_occupation", {}))[0] == 200
    assert await tokens(http, node) == await tokens(http, seed7_node)
    assert await version(http, node) == "v7"


async def test_every_generation_reply_names_the_weight_version(
    http: aiohttp.ClientSession, node: NodeProcess
) -> None:
    status, reply = await post_json(http, f"{node.url}/update_weight_version",
                                    {"new_version": "named-1"})
    assert status == 200 and reply["weight_version"] == "named-1"
    async with http.post(f"{node.url}/generate", json=greedy(PROMPT, 4)) as answer:
        assert answer.headers[WEIGHT_VERSION_HEADER] == "named-1"
        assert (await answer.json())["meta_info"]["weight_version"] == "named-1"
    async with http.post(f"{node.url}/generate", json=greedy(PROMPT, 4, stream=True)) as answer:
        assert answer.headers[WEIGHT_VERSION_HEADER] == "named-1"
        chunks = [event for event in await sse_events(answer) if event != "[DONE]"]
        assert chunks and all(c["meta_info"]["weight_version"] == "named-1" for c in chunks)
    openai_bodies = {
        "/v1/completions": {"prompt": PROMPT, "max_tokens": 4},
        "/v1/chat/completions": {"messages": [{"role": "user", "content": PROMPT}],
                                 "max_tokens": 4},
    }
    for route, body in openai_bodies.items():
        for stream in (False, True):
            async with http.post(f"{node.url}{route}", json={**body, "stream": stream}) as answer:
                assert answer.status == 200, await answer.text()
                assert answer.headers[WEIGHT_VERSION_HEADER] == "named-1", (route, stream)
                await answer.read()


async def test_a_version_that_cannot_travel_in_a_header_is_refused(
    http: aiohttp.ClientSession, node: NodeProcess
) -> None:
    before = await version(http, node)
    status, reply = await post_json(http, f"{node.url}/update_weight_version",
                                    {"new_version": "two words"})
    assert status == 400 and "new_version" in reply["message"]
    assert await version(http, node) == before


@pytest.fixture(scope="module")
def misfits(seed7_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files that do not fit the tiny float32 model, made before any test talks to a node."""
    folder = tmp_path_factory.mktemp("misfits")
    renamed = load_file(str(seed7_weights))
    renamed["output_head"] = renamed.pop("lm_head")
    save_file(renamed, str(folder / "renamed.safetensors"))
    (folder / "truncated.safetensors").write_bytes(seed7_weights.read_bytes()[:-100])
    (folder / "json.safetensors").write_text(json.dumps({"weights": "none"}))
    return {
        "other_width": save_weights(folder / "width.safetensors", "--width", "128"),
        "other_dtype": save_weights(folder / "bf16.safetensors", "--dtype", "bfloat16"),
        "renamed": folder / "renamed.safetensors",
        "truncated": folder / "truncated.safetensors",
        "not_safetensors": folder / "json.safetensors",
        "missing": folder / "missing.safetensors",
        "fits": seed7_weights,
    }


@pytest.mark.parametrize(("misfit", "load_format", "named"), [
    ("other_width", None, "embed has shape [258, 128], the model needs [258, 256]"),
    ("other_dtype", None, "has dtype BF16, the model needs F32"),
    ("renamed", None, "missing ['lm_head'], unexpected ['output_head']"),
    ("truncated", None, "truncated"),
    ("not_safetensors", None, "not a safetensors file"),
    ("missing", None, "no such file"),
    ("fits", "gguf", "unknown load_format 'gguf'"),
])
async def test_a_file_that_does_not_fit_is_refused_and_the_old_weights_keep_serving(
    http: aiohttp.ClientSession, node: NodeProcess, misfits: dict[str, Path],
    misfit: str, load_format: str | None, named: str,
) -> None:
    before, version_before = await tokens(http, node), await version(http, node)
    status, reply = await update(http, node, model_path=str(misfits[misfit]),
                                 load_format=load_format, weight_version="never")
    assert status == 400, reply
    assert named in reply["message"]
    assert await tokens(http, node) == before
    assert await version(http, node) == version_before


async def test_an_update_while_weights_are_released_is_409(
    http: aiohttp.ClientSession, node: NodeProcess, seed7_weights: Path
) -> None:
    before = await tokens(http, node)
    status, _ = await post_json(http, f"{node.url}/release_memory_occupation",
                                {"tags": ["weights"]})
    assert status == 200
    try:
        status, reply = await update(http, node, model_path=str(seed7_weights))
        assert status == 409 and "resume weights first" in reply["message"]
    finally:
        await post_json(http, f"{node.url}/resume_memory_occupation", {})
    assert await tokens(http, node) == before


async def test_a_crash_rule_on_the_update_route_ends_the_node_after_the_update_started(
    http: aiohttp.ClientSession, start_node: StartNode, seed7_weights: Path
) -> None:
    node = start_node("--enable-fault-injection", "--fault",
                      "route=/update_weights_from_disk,kind=crash,code=3")
    with pytest.raises(aiohttp.ClientError):
        await update(http, node, model_path=str(seed7_weights))
    assert node.process.proc.wait(timeout=10) == 3
