"""`pdfleet refit`: pause, update from disk, continue through the router, one row per node
per step; generation continues whatever failed; exit 0, 1 or 2 as `pdfleet sleep`."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tests.procs import closed_port
from tests.router.test_cli import pdfleet

pytestmark = pytest.mark.timeout(60)


def posts_to(stub_url: str) -> list[tuple[str, dict]]:
    with urllib.request.urlopen(f"{stub_url}/_stub/requests", timeout=5) as reply:
        seen = json.loads(reply.read())
    return [(s["path"], json.loads(s["body"] or "null")) for s in seen if s["method"] == "POST"]


def step_rows(stdout: str, step: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.strip().startswith(f"{step} ")]


def test_refit_pauses_updates_and_continues_every_node_and_exits_0(stub_nodes, router):
    stubs = stub_nodes([{}, {"engine": "vllm"}])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode", "engine": "vllm"}])
    done = pdfleet("refit", "--model-path", "/ckpt/s2.safetensors", "--version", "v2",
                   "--mode", "in_place", "--router", r.url, "--timeout", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    for step in ("pause", "update", "continue"):
        rows = step_rows(done.stdout, step)
        assert len(rows) == 2 and all(" ok " in row for row in rows), done.stdout
        for url in stubs.urls:
            assert any(url.removeprefix("http://") in row for row in rows)
    assert posts_to(stubs.urls[0]) == [
        ("/pause_generation", {"mode": "in_place"}),
        ("/update_weights_from_disk",
         {"model_path": "/ckpt/s2.safetensors", "weight_version": "v2"}),
        ("/continue_generation", {})]
    assert [path for path, _ in posts_to(stubs.urls[1])] == ["/pause", "/collective_rpc",
                                                             "/resume"]

    # Again: every node is at v2, so the update touches none of them.
    done = pdfleet("refit", "--model-path", "/ckpt/s2.safetensors", "--version", "v2",
                   "--router", r.url)
    assert done.returncode == 0
    assert all("already at v2" in row for row in step_rows(done.stdout, "update"))
    assert len(posts_to(stubs.urls[0])) == 5


def test_a_failed_update_exits_1_and_generation_still_continues(stub_nodes, router):
    failing = {"engine": "sglang", "routes": {"/update_weights_from_disk": {"fail": "bad file"}}}
    stubs = stub_nodes([{}, failing])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode", "engine": "sglang"}])
    done = pdfleet("refit", "--model-path", "/ckpt/bad", "--router", r.url)
    assert done.returncode == 1, done.stdout + done.stderr
    (failed,) = [row for row in step_rows(done.stdout, "update") if "failed" in row]
    assert stubs.urls[1].removeprefix("http://") in failed and "bad file" in failed
    assert "refit stopped: update failed on 1/2 nodes; generation continued" in done.stdout
    for url in stubs.urls:
        assert posts_to(url)[-1] == ("/continue_generation", {})


def test_a_failed_pause_skips_the_update_but_continues(stub_nodes, router):
    stubs = stub_nodes([{"routes": {"/pause_generation": {"status": 500, "body": "text"}}}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    done = pdfleet("refit", "--model-path", "/ckpt/s2", "--router", r.url)
    assert done.returncode == 1
    assert "refit stopped: pause failed on 1/1 nodes" in done.stdout
    assert [path for path, _ in posts_to(stubs.urls[0])] == [
        "/pause_generation", "/continue_generation"]


def test_exit_2_when_the_router_refuses_or_is_unreachable_or_the_mode_is_unknown(
        stub_nodes, router):
    done = pdfleet("refit", "--model-path", "/c", "--router",
                   f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 2 and "router unreachable" in done.stderr
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}], env={"PDFLEET_ADMIN_TOKEN": "t0k"})
    done = pdfleet("refit", "--model-path", "/c", "--router", r.url,
                   env={"PDFLEET_ADMIN_TOKEN": "wrong"})
    assert done.returncode == 2 and "router refused pause (401)" in done.stderr
    done = pdfleet("refit", "--model-path", "/c", "--mode", "retract", "--router", r.url,
                   env={"PDFLEET_ADMIN_TOKEN": "t0k"})
    assert done.returncode == 2 and "--mode must be one of abort, in_place" in done.stderr
    assert posts_to(stubs.urls[0]) == []
