"""`pdfleet chaos`: the shipped scenarios pass on a fresh local fleet, and a wrong
expectation turns the run red with a readable message in both reports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from junitparser import Error, Failure, JUnitXml

from pdfleet.configs import CHAOS_SCENARIOS
from tests.node.conftest import NodeProcess, launch_node
from tests.procs import ROOT, Process, Router, closed_port, free_port, wait_http_ok


def chaos(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pdfleet", "chaos", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def cases(junit: Path) -> list[Any]:
    return [case for suite in JUnitXml.fromfile(str(junit)) for case in suite]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[NodeProcess]]]:
    """A prefill and a decode node with fault injection on, behind a router."""
    nodes = [launch_node("--enable-fault-injection", role=role) for role in ("prefill", "decode")]
    router = Router(tmp_path_factory.mktemp("chaos"), [
        {"url": nodes[0].url, "role": "prefill", "bootstrap_port": nodes[0].bootstrap_port},
        {"url": nodes[1].url, "role": "decode"}])
    yield router.url, nodes
    router.stop()
    for node in nodes:
        node.stop()


@pytest.mark.timeout(300)
def test_shipped_scenarios_pass_on_a_local_fleet_and_junit_parses(tmp_path):
    junit, report = tmp_path / "chaos.xml", tmp_path / "chaos.json"
    done = chaos("--junit", str(junit), "--json", str(report), timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    expected = [s["name"] for s in yaml.safe_load(CHAOS_SCENARIOS.read_text())["scenarios"]]
    found = cases(junit)
    assert [case.name for case in found] == expected
    assert all(case.is_passed for case in found)
    body = json.loads(report.read_text())
    assert body["passed"] is True and body["summary"] == {
        "total": len(expected), "passed": len(expected), "failed": 0}


WRONG = {
    "fleet": {"nodes": [{"name": "prefill", "role": "prefill"},
                        {"name": "decode", "role": "decode"}]},
    "scenarios": [
        {"name": "5xx on flush is reported",
         "faults": {"decode": ["route=/flush_cache,kind=status,code=500"]},
         "flush": {}, "expect": {"status": 502, "failed": {"decode": {"status": 500}}}},
        {"name": "deliberately wrong expectation",
         "faults": {"decode": ["route=/flush_cache,kind=status,code=500"]},
         "flush": {}, "expect": {"status": 200, "failed": {}}},
    ],
}


@pytest.mark.timeout(120)
def test_wrong_expectation_exits_1_with_a_readable_message_in_both_reports(fleet, tmp_path):
    router_url, _ = fleet
    scenarios, junit, report = (tmp_path / "wrong.yaml", tmp_path / "wrong.xml",
                                tmp_path / "wrong.json")
    scenarios.write_text(yaml.safe_dump(WRONG))
    done = chaos("--scenarios", str(scenarios), "--router", router_url,
                 "--junit", str(junit), "--json", str(report))
    assert done.returncode == 1, done.stdout + done.stderr
    passed, wrong = cases(junit)
    assert passed.is_passed and not wrong.is_passed
    failure = wrong.result[0]
    assert isinstance(failure, Failure)
    assert failure.message == "step 1 (flush): router answered 502, expected 200"
    assert "decode: expected to succeed, but it failed with status 500" in failure.text
    assert "injected fault: status 500" in failure.text  # the router's reply
    body = json.loads(report.read_text())
    assert body["passed"] is False and body["summary"]["failed"] == 1
    assert body["scenarios"][1]["mismatches"][0] == failure.message
    assert "deliberately wrong expectation" in done.stdout


@pytest.mark.timeout(120)
def test_traffic_scenario_accounts_for_every_request(fleet, tmp_path):
    router_url, _ = fleet
    scenarios, report = tmp_path / "traffic.yaml", tmp_path / "traffic.json"
    scenarios.write_text(yaml.safe_dump({"scenarios": [{
        "name": "streamed traffic across a sleep/wake cycle",
        "traffic": {"requests": 10, "concurrency": 2, "stream": True,
                    "sleep_wake_cycles": 1, "asleep_s": 0.3, "cycle_drain": "abort"},
        "expect": {"traffic": {"min_completed": 2}}}]}))
    done = chaos("--scenarios", str(scenarios), "--router", router_url, "--json", str(report))
    assert done.returncode == 0, done.stdout + done.stderr
    traffic = json.loads(report.read_text())["scenarios"][0]["steps"][0]["traffic"]
    assert traffic["lost"] == 0 and traffic["wrong_tokens"] == 0
    assert traffic["completed"] + traffic["refused"] + traffic["aborted"] == traffic["sent"]
    assert traffic["cycles_done"] == 1


@pytest.mark.timeout(120)
def test_a_harness_error_is_a_junit_error(fleet, tmp_path):
    router_url, _ = fleet
    scenarios, junit = tmp_path / "missing.yaml", tmp_path / "missing.xml"
    scenarios.write_text(yaml.safe_dump({
        "fleet": {"nodes": [{"name": "ghost", "role": "decode",
                             "url": f"http://127.0.0.1:{closed_port()}"}]},
        "scenarios": [{"name": "fault on a node that is not there",
                       "faults": {"ghost": ["kind=hang"]}, "flush": {}}]}))
    done = chaos("--scenarios", str(scenarios), "--router", router_url, "--junit", str(junit))
    assert done.returncode == 1
    [case] = cases(junit)
    assert isinstance(case.result[0], Error)


def test_unreachable_router_exits_2():
    done = chaos("--router", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 2 and "fleet unavailable" in done.stderr


@pytest.mark.parametrize(("scenario", "named"), [
    ({"name": "typo", "flush": {}, "expct": {"status": 200}}, "unknown key 'scenarios.0.expct'"),
    ({"name": "bad rule", "flush": {}, "faults": {"decode": ["kind=status,code=5xx"]}},
     "scenarios.0 (bad rule).faults.decode: fault rule key 'code'"),
    ({"name": "unbounded", "traffic": {"concurrency": 2}}, "must be bounded"),
])
def test_bad_scenario_file_exits_2_naming_the_key(tmp_path, scenario, named):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"scenarios": [scenario]}))
    done = chaos("--scenarios", str(path))
    assert done.returncode == 2
    assert named in " ".join(done.stderr.split()) and "Traceback" not in done.stderr


@pytest.mark.timeout(120)
def test_scenarios_run_through_fault_proxies_in_front_of_the_nodes(fleet, tmp_path):
    _, nodes = fleet
    ports = [free_port(), free_port()]
    proxies = [Process([sys.executable, "-m", "pdfleet", "faultproxy", "--listen",
                        f"127.0.0.1:{port}", "--upstream", node.url])
               for port, node in zip(ports, nodes, strict=True)]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    router = None
    try:
        for url, proxy in zip(urls, proxies, strict=True):
            wait_http_ok(f"{url}/health", proxy)
        router = Router(tmp_path, [
            {"url": urls[0], "role": "prefill", "bootstrap_port": nodes[0].bootstrap_port},
            {"url": urls[1], "role": "decode"}])
        scenarios = tmp_path / "proxied.yaml"
        scenarios.write_text(yaml.safe_dump({
            "fleet": {"nodes": [{"name": "prefill", "role": "prefill", "url": urls[0]},
                                {"name": "decode", "role": "decode", "url": urls[1]}]},
            "scenarios": [
                {"name": "reset on the proxy", "release": {},
                 "faults": {"decode": ["route=/release_memory_occupation,kind=reset"]},
                 "expect": {"status": 502, "failed": {"decode": {"error": "reset"}}},
                 "final": {"released_tags": {"prefill": ["weights", "kv_cache"], "decode": []}}},
                {"name": "traffic through the proxies",
                 "traffic": {"requests": 6, "concurrency": 2},
                 "expect": {"traffic": {"min_completed": 6}}},
            ]}))
        done = chaos("--scenarios", str(scenarios), "--router", router.url)
        assert done.returncode == 0, done.stdout + done.stderr
    finally:
        if router is not None:
            router.stop()
        for proxy in proxies:
            proxy.stop()
