"""The RL refit through the router on a real fleet (a prefill, a decode and a mixed node):
new weights from a trainer's broadcast (a gloo process group, the trainer at rank 0) and from
disk (`pdfleet refit`), after which every route serves exactly the tokens of a node started
with those weights, and every reply names the new version."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from node.options import NodeOptions
from node.runtime import model_config
from pdfleet.vocabulary import WEIGHT_VERSION_HEADER
from tests.node.conftest import save_weights
from tests.procs import ROOT, Process, Router, free_port, start_cpu_node, wait_http_ok

pytestmark = pytest.mark.timeout(180)

TRAINER = ROOT / "tests" / "node" / "refit_trainer.py"
PROMPT = "Between rollouts the trainer pushes"
JOIN_TIMEOUT_S = 60
GROUP = "refit-e2e"


@dataclass
class Fleet:
    router: Router
    # A node started with the seed-7 weights: the tokens the fleet must serve once updated.
    seed7_url: str


def post(url: str, body: Any, timeout: float = 120) -> tuple[int, Any, Message]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read()), reply.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def generate(base: str) -> tuple[list[int], str | None]:
    """Greedy tokens for the prompt, and the weight version the reply names."""
    status, reply, headers = post(f"{base}/generate", {
        "text": PROMPT, "sampling_params": {"max_new_tokens": 12, "temperature": 0}})
    assert status == 200, reply
    assert headers.get(WEIGHT_VERSION_HEADER) == reply["meta_info"]["weight_version"]
    return reply["output_ids"], reply["meta_info"]["weight_version"]


def served_by_every_route(fleet: Fleet) -> set[tuple[tuple[int, ...], str | None]]:
    """What the router serves: round robin alternates the PD pair and the mixed node."""
    return {(tuple(ids), version) for ids, version in (generate(fleet.router.url)
                                                      for _ in range(4))}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    bootstrap_port = free_port()
    started = [
        start_cpu_node("prefill", "--bootstrap-port", str(bootstrap_port)),
        start_cpu_node("decode"),
        start_cpu_node("mixed"),
        start_cpu_node("mixed", "--seed", "7"),
    ]
    router = None
    try:
        for process, url in started:
            wait_http_ok(f"{url}/health", process, timeout=120)
        (_, prefill), (_, decode), (_, mixed), (_, seed7) = started
        router = Router(tmp_path_factory.mktemp("refit"), [
            {"url": prefill, "role": "prefill", "bootstrap_port": bootstrap_port},
            {"url": decode, "role": "decode"},
            {"url": mixed, "role": "mixed"}])
        yield Fleet(router, seed7)
    finally:
        if router is not None:
            router.stop()
        for process, _ in started:
            process.stop()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {seed: save_weights(folder / f"seed{seed}.safetensors", "--seed", str(seed))
            for seed in (0, 7)}


def refit(fleet: Fleet, path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pdfleet", "refit", "--model-path", str(path), "--version",
         version, "--router", fleet.router.url],
        cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_pdfleet_refit_serves_the_new_weights_on_every_route(
    fleet: Fleet, checkpoints: dict[int, Path]
) -> None:
    wanted, _ = generate(fleet.seed7_url)
    done = refit(fleet, checkpoints[0], "base")
    assert done.returncode == 0, done.stdout + done.stderr
    [(base_tokens, version)] = served_by_every_route(fleet)
    assert version == "base" and list(base_tokens) != wanted

    done = refit(fleet, checkpoints[7], "disk-7")
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("pause", "update", "continue"):
        assert done.stdout.count(step) >= 3, done.stdout  # one row per node per step
    assert served_by_every_route(fleet) == {(tuple(wanted), "disk-7")}
    status = get(f"{fleet.router.url}/cluster/status")
    assert status["weight_version"] == "disk-7"
    assert [n["stale"] for n in status["nodes"]] == [False] * 3

    done = refit(fleet, checkpoints[7], "disk-7")  # a retry: every node is already there
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already at disk-7" in done.stdout


def test_a_trainer_broadcast_through_the_router_reaches_every_node(
    fleet: Fleet, checkpoints: dict[int, Path]
) -> None:
    assert refit(fleet, checkpoints[0], "base").returncode == 0
    wanted, _ = generate(fleet.seed7_url)
    port = free_port()
    # Rank 0 is the trainer; the router gives the three nodes ranks 1, 2 and 3.
    trainer = Process([sys.executable, str(TRAINER), "--port", str(port), "--world-size", "4",
                       "--group-name", GROUP, "--seed", "7", "--timeout-s", str(JOIN_TIMEOUT_S)])
    try:
        status, reply, _ = post(f"{fleet.router.url}/init_weights_update_group", {
            "master_address": "127.0.0.1", "master_port": port, "rank_offset": 1,
            "world_size": 4, "group_name": GROUP, "backend": "gloo",
            "timeout_s": JOIN_TIMEOUT_S})
        assert status == 200, (reply, trainer.output())
        assert sorted(row["result"]["rank"] for row in reply["nodes"]) == [1, 2, 3]

        layout = model_config(NodeOptions()).layout()
        status, reply, _ = post(f"{fleet.router.url}/update_weights_from_distributed", {
            "names": [name for name, _ in layout], "dtypes": ["float32"] * len(layout),
            "shapes": [list(shape) for _, shape in layout], "group_name": GROUP,
            "weight_version": "step-7"})
        assert status == 200, (reply, trainer.output())
        assert trainer.proc.wait(JOIN_TIMEOUT_S) == 0, trainer.output()
    finally:
        trainer.stop()
    assert served_by_every_route(fleet) == {(tuple(wanted), "step-7")}
    assert get(f"{fleet.router.url}/get_weight_version")["weight_version"] == "step-7"
    status, reply, _ = post(f"{fleet.router.url}/fanout/destroy_weights_update_group",
                            {"group_name": GROUP})
    assert status == 200 and reply["total"] == 3, reply
