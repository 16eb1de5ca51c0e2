"""Weight updates on a prefill/decode pair: the update drains (or aborts) the request in
flight, KV made by other weights is refused, and a copy that fails part-way is reported.

A decode request whose KV has not arrived stays in flight until the test prefills its room,
so "an update meets a request in flight" happens without timing guesses.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pdfleet.vocabulary import SLEEPING_HEADER
from tests.node.conftest import (
    NodeProcess,
    post_json,
    save_weights,
    wait_for_info,
)
from tests.node.test_drain import pd_body, start_waiting_decode

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def seed0_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_weights(tmp_path_factory.mktemp("weights") / "seed0.safetensors")


async def update(http: aiohttp.ClientSession, node: NodeProcess, path: Path,
                 **body: Any) -> tuple[int, Any]:
    return await post_json(http, f"{node.url}/update_weights_from_disk",
                           {"model_path": str(path), **body})


@pytest.fixture(autouse=True)
async def pair(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, seed0_weights: Path
) -> AsyncIterator[tuple[NodeProcess, NodeProcess]]:
    yield prefill, decode
    for node in (prefill, decode):
        await post_json(http, f"{node.url}/resume_memory_occupation", {})
        await wait_for_info(http, node, lambda info: info["inflight"] == 0)
        status, reply = await update(http, node, seed0_weights, weight_version="default")
        assert status == 200, reply


async def pd_generate(http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess,
                      body: dict[str, Any]) -> tuple[int, Any]:
    (p_status, p_reply), decoded = await asyncio.gather(
        post_json(http, f"{prefill.url}/generate", body),
        post_json(http, f"{decode.url}/generate", body))
    assert p_status == 200, p_reply
    return decoded


async def test_an_update_waits_for_the_request_in_flight_which_keeps_the_old_weights(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, seed7_weights: Path
) -> None:
    status, reference = await pd_generate(http, prefill, decode, pd_body(prefill))
    assert status == 200, reference
    body, waiting = await start_waiting_decode(http, prefill, decode)
    updating = asyncio.create_task(update(http, decode, seed7_weights, weight_version="v7"))
    await wait_for_info(http, decode, lambda info: info["state"] == "draining")

    async with http.post(f"{decode.url}/generate", json=pd_body(prefill)) as refused:
        assert refused.status == 503
        assert "updating weights" in (await refused.json())["message"]
        assert "Retry-After" in refused.headers and SLEEPING_HEADER not in refused.headers

    assert (await post_json(http, f"{prefill.url}/generate", body))[0] == 200
    status, reply = await waiting
    assert status == 200, reply
    assert reply["output_ids"] == reference["output_ids"]
    assert reply["meta_info"]["weight_version"] == "default"
    status, report = await updating
    assert status == 200, report
    assert report["drained_requests"] == 1 and report["weight_version"] == "v7"


async def test_a_decode_node_refuses_kv_made_by_other_weights(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, seed7_weights: Path
) -> None:
    assert (await update(http, decode, seed7_weights, weight_version="v7"))[0] == 200
    status, reply = await pd_generate(http, prefill, decode, pd_body(prefill))
    assert status == 409, reply
    assert "computed by weights version 'default'; this node serves 'v7'" in reply["message"]

    assert (await update(http, prefill, seed7_weights, weight_version="v7"))[0] == 200
    status, reply = await pd_generate(http, prefill, decode, pd_body(prefill))
    assert status == 200, reply
    assert reply["meta_info"]["weight_version"] == "v7"


async def test_abort_all_requests_ends_the_request_in_flight_with_a_clear_error(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, seed7_weights: Path
) -> None:
    _, waiting = await start_waiting_decode(http, prefill, decode)
    status, report = await update(http, decode, seed7_weights, abort_all_requests=True)
    assert status == 200, report
    status, reply = await waiting
    assert status == 503
    assert "updating its weights (abort_all_requests)" in reply["message"]


async def test_an_update_during_another_memory_operation_is_409(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, seed7_weights: Path
) -> None:
    body, waiting = await start_waiting_decode(http, prefill, decode)
    releasing = asyncio.create_task(post_json(
        http, f"{decode.url}/release_memory_occupation", {"drain": "wait"}))
    await wait_for_info(http, decode, lambda info: info["state"] == "draining")
    status, reply = await update(http, decode, seed7_weights)
    assert status == 409 and "another memory operation is running" in reply["message"]
    assert (await post_json(http, f"{prefill.url}/generate", body))[0] == 200
    assert (await waiting)[0] == 200
    assert (await releasing)[0] == 200
    assert decode.info()["weight_version"] == "default"


async def test_a_copy_that_fails_part_way_leaves_the_weights_incomplete_until_an_update(
    http: aiohttp.ClientSession, prefill: NodeProcess, decode: NodeProcess, seed7_weights: Path,
    tmp_path: Path,
) -> None:
    shrinking = shutil.copy(seed7_weights, tmp_path / "shrinking.safetensors")
    body, waiting = await start_waiting_decode(http, prefill, decode)
    updating = asyncio.create_task(update(http, decode, Path(shrinking), weight_version="v7"))
    # The file passed its check; it is cut short while the update waits for the request.
    await wait_for_info(http, decode, lambda info: info["state"] == "draining")
    os.truncate(shrinking, os.stat(shrinking).st_size // 2)
    assert (await post_json(http, f"{prefill.url}/generate", body))[0] == 200
    assert (await waiting)[0] == 200

    status, report = await updating
    assert status == 500, report
    assert "weights incomplete after a failed update; update again" in report["message"]
    assert "truncated" in report["message"]
    info = decode.info()
    assert info["state"] == "incomplete" and info["weight_version"] is None
    async with http.post(f"{decode.url}/generate", json=pd_body(prefill)) as refused:
        assert refused.status == 503 and SLEEPING_HEADER not in refused.headers
        assert "weights incomplete" in (await refused.json())["message"]
    status, reply = await post_json(http, f"{decode.url}/release_memory_occupation", {})
    assert status == 409 and "weights incomplete" in reply["message"]

    status, report = await update(http, decode, seed7_weights, weight_version="v7")
    assert status == 200, report
    assert decode.info()["weight_version"] == "v7"
    async with http.get(f"{decode.url}/health_generate") as probe:
        assert probe.status == 200
