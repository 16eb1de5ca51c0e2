"""`pdfleet up` starts a local fleet of real nodes and the router, and stops all of
it cleanly."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.procs import ROOT, Process, eventually, free_port, wait_http_ok

STARTUP_S = 120


def fleet_config(tmp_path: Path, node_launch: dict[str, Any] | None = None) -> tuple[Path, str]:
    launch = {"device": "cpu", "memory_backend": "cpu", **(node_launch or {})}
    router_port = free_port()
    config = {
        "router": {"port": router_port},
        "nodes": [
            {"url": f"http://127.0.0.1:{free_port()}", "role": "prefill",
             "bootstrap_port": free_port(), "launch": launch},
            {"url": f"http://127.0.0.1:{free_port()}", "role": "decode",
             "launch": {"device": "cpu", "memory_backend": "cpu"}},
        ],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, f"http://127.0.0.1:{router_port}"


def up_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "pdfleet", "up", "--config", str(config),
            "--ready-timeout", str(STARTUP_S)]


def generate(router_url: str) -> dict[str, Any]:
    body = json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": 4,
                                                         "temperature": 0}}).encode()
    request = urllib.request.Request(f"{router_url}/generate", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(180)
def test_up_starts_the_fleet_and_sigterm_stops_every_process(tmp_path):
    config, router_url = fleet_config(tmp_path)
    up = Process(up_command(config))
    try:
        wait_http_ok(f"{router_url}/health", up, timeout=STARTUP_S)
        launcher = psutil.Process(up.proc.pid)
        children = launcher.children(recursive=True)
        assert len(launcher.children()) == 3  # two nodes and the router
        assert len(generate(router_url)["output_ids"]) == 4
        os.kill(up.proc.pid, signal.SIGTERM)
        assert up.proc.wait(30) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"orphans: {alive}"
    finally:
        up.stop()


@pytest.mark.timeout(180)
def test_children_stop_when_up_itself_is_killed(tmp_path):
    config, router_url = fleet_config(tmp_path)
    up = Process(up_command(config))
    children: list[psutil.Process] = []
    try:
        wait_http_ok(f"{router_url}/health", up, timeout=STARTUP_S)
        children = psutil.Process(up.proc.pid).children()
        assert len(children) == 3
        os.kill(up.proc.pid, signal.SIGKILL)  # no chance to clean up
        _, alive = psutil.wait_procs(children, timeout=30)
        assert alive == [], f"orphans: {alive}"
    finally:
        up.stop()
        for child in children:
            if child.is_running():
                child.kill()


@pytest.mark.timeout(60)
def test_up_refuses_ports_in_use_before_starting_anything(tmp_path):
    config, router_url = fleet_config(tmp_path)
    port = int(router_url.rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        result = subprocess.run(up_command(config), cwd=ROOT, capture_output=True, text=True,
                                timeout=30)
    assert result.returncode == 1
    assert f"port {port} (router) is already in use" in result.stderr


@pytest.mark.timeout(120)
def test_up_names_a_node_that_dies_at_start_and_stops_the_rest(tmp_path):
    config, _ = fleet_config(tmp_path, node_launch={"no_such_option": 1})
    up = subprocess.Popen(up_command(config), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = up.communicate(timeout=90)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 1
    assert "prefill" in err and "exited with code 2" in err
    assert "no-such-option" in err  # the tail of the node's own output says why
    ports = {str(n["url"]).rsplit(":", 1)[1] for n in yaml.safe_load(config.read_text())["nodes"]}
    leftover = [p for p in psutil.process_iter(["cmdline"])
                if "pdfleet" in (cmdline := p.info["cmdline"] or [])
                and (str(config) in cmdline or ports & set(cmdline))]
    assert leftover == []


@pytest.mark.timeout(180)
async def test_router_log_in_the_log_directory_records_failures_not_successes(
        tmp_path, http):
    config, router_url = fleet_config(tmp_path)
    decode_url = yaml.safe_load(config.read_text())["nodes"][1]["url"]
    up = Process(up_command(config), stdout=subprocess.PIPE)
    try:
        ready = up.wait_for_line("pdfleet is up", timeout=STARTUP_S)
        [log_dir] = re.findall(r"logs in (\S+)\)", ready)
        router_log = Path(log_dir) / "router.log"
        for _ in range(3):
            assert len(generate(router_url)["output_ids"]) == 4
        [decode] = [child for child in psutil.Process(up.proc.pid).children()
                    if decode_url.rsplit(":", 1)[1] in " ".join(child.cmdline())]
        decode.kill()
        async with http.post(f"{router_url}/release_memory_occupation", json={}) as resp:
            assert resp.status == 502

        async def logged() -> bool:  # the poller marks the node down within a poll interval
            text = router_log.read_text()
            return f"node {decode_url} marked down" in text and "failed on 1 of 2" in text

        await eventually(logged)
        lines = router_log.read_text().splitlines()
        assert all("WARNING" in line for line in lines), lines
        assert not [line for line in lines if "/generate" in line]
    finally:
        up.stop()
