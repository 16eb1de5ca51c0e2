"""The OpenAPI document describes every route, and schemathesis finds no failure
against a running router with SGLang-, vLLM- and pdfleet-shaped nodes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
SETTINGS = Path(__file__).parent / "schemathesis.toml"
GENERATION_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")


def fleet(stub_nodes, router):
    stubs = stub_nodes([{}, {}, {"engine": "sglang"}, {"engine": "vllm"}])
    return router([
        {"url": stubs.urls[0], "role": "prefill", "bootstrap_port": 8998},
        {"url": stubs.urls[1], "role": "decode"},
        {"url": stubs.urls[2], "role": "mixed", "engine": "sglang"},
        {"url": stubs.urls[3], "role": "mixed", "engine": "vllm"},
    ], control_timeout_s=2, poll_timeout_s=0.5)


async def test_every_route_is_documented_with_its_body_and_error_replies(
        stub_nodes, router, http):
    r = fleet(stub_nodes, router)
    async with http.get(f"{r.url}/openapi.json") as resp:
        paths = (await resp.json())["paths"]
    for path in (*GENERATION_ROUTES, "/release_memory_occupation", "/sleep",
                 "/resume_memory_occupation", "/wake_up", "/flush_cache", "/workers"):
        post = paths[path]["post"]
        assert "application/json" in post["requestBody"]["content"], path
        assert {"400", "422"} <= set(post["responses"]), path
    assert {"/is_sleeping", "/health", "/cluster/status", "/v1/models"} <= set(paths)
    wake_up = {p["name"] for p in paths["/wake_up"]["post"]["parameters"]}
    sleep = {p["name"] for p in paths["/sleep"]["post"]["parameters"]}
    assert "tags" in wake_up and {"tags", "level", "mode"} <= sleep
    for path in GENERATION_ROUTES:
        assert "X-Pdfleet-Weight-Version" in paths[path]["post"]["responses"]["200"]["headers"]


def test_schemathesis_finds_no_failure_against_a_running_router(stub_nodes, router, tmp_path):
    r = fleet(stub_nodes, router)
    done = subprocess.run(
        [str(SCHEMATHESIS), "--no-color", "--config-file", str(SETTINGS), "run",
         f"{r.url}/openapi.json", "--max-examples", "15", "--workers", "1",
         "--request-timeout", "10"],
        # schemathesis keeps its caches in the working directory: keep them out of the tree
        cwd=tmp_path, capture_output=True, text=True, timeout=200,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
