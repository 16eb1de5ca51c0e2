"""`pdfleet sleep | wake | status` print one row per node and exit 0, 1 or 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from tests.procs import ROOT, closed_port

pytestmark = pytest.mark.timeout(60)


def pdfleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pdfleet", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=30, env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_sleep_and_wake_exit_0_when_every_node_succeeds(stub_nodes, router):
    stubs = stub_nodes([{}, {}])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"}])
    done = pdfleet("sleep", "--tags", "weights,kv_cache", "--router", r.url)
    assert done.returncode == 0, done.stderr
    for url in stubs.urls:
        assert url.removeprefix("http://") in done.stdout
    assert "prefill" in done.stdout and "decode" in done.stdout and "1.00 MiB" in done.stdout
    done = pdfleet("wake", "--router", r.url, "--timeout", "5")
    assert done.returncode == 0 and "2 ok, 0 failed" in done.stdout


def test_sleep_exits_1_and_names_the_failed_node(stub_nodes, router):
    stubs = stub_nodes([{}, {"status": 500, "body": "text"}])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"}])
    done = pdfleet("sleep", "--router", r.url)
    assert done.returncode == 1
    assert "1 ok, 1 failed" in done.stdout and "500: node error" in done.stdout


def test_exit_2_when_router_is_unreachable_or_refuses(stub_nodes, router):
    done = pdfleet("sleep", "--router", f"http://127.0.0.1:{closed_port()}")
    assert done.returncode == 2 and "router unreachable" in done.stderr
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "decode"}], env={"PDFLEET_ADMIN_TOKEN": "t0k"})
    done = pdfleet("wake", "--router", r.url, env={"PDFLEET_ADMIN_TOKEN": "wrong"})
    assert done.returncode == 2 and "401" in done.stderr
    done = pdfleet("wake", "--router", r.url, env={"PDFLEET_ADMIN_TOKEN": "t0k"})
    assert done.returncode == 0


def test_status_prints_a_table_or_json(stub_nodes, router):
    stubs = stub_nodes([{}])
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router([{"url": stubs.urls[0], "role": "prefill"}, {"url": dead, "role": "decode"}])
    done = pdfleet("status", "--router", r.url, "--json")
    assert done.returncode == 0
    body = json.loads(done.stdout)
    assert {n["server"] for n in body["nodes"]} == {stubs.urls[0], dead}
    done = pdfleet("status", "--router", r.url)
    assert done.returncode == 0
    for url in (stubs.urls[0], dead):
        assert url.removeprefix("http://") in done.stdout
    assert pdfleet("status", "--router", dead).returncode == 2


@pytest.mark.parametrize(("command", "tags"), [("sleep", ""), ("wake", ","), ("sleep", " , ")])
def test_tags_naming_no_tag_is_a_usage_error_and_sends_nothing(stub_nodes, router, command,
                                                              tags):
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    done = pdfleet(command, "--tags", tags, "--router", r.url)
    assert done.returncode == 2 and "names no tag" in done.stderr
    with urllib.request.urlopen(f"{stubs.urls[0]}/_stub/requests", timeout=5) as reply:
        assert json.loads(reply.read()) == []


def test_an_unknown_tag_exits_2_with_the_routers_reason_and_no_node_called(stub_nodes, router):
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    done = pdfleet("sleep", "--tags", "weight", "--router", r.url)
    assert done.returncode == 2 and "valid tags are" in done.stderr
    with urllib.request.urlopen(f"{stubs.urls[0]}/_stub/requests", timeout=5) as reply:
        assert json.loads(reply.read()) == []


def test_binary_node_errors_print_as_text_and_flags_as_words(stub_nodes, router):
    stubs = stub_nodes([{}, {"status": 500, "body": "binary", "size": 65536}])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"}])
    done = pdfleet("sleep", "--router", r.url)
    assert done.returncode == 1
    assert "500: <" in done.stdout and " bytes, not text>" in done.stdout
    assert "\ufffd" not in done.stdout
    done = pdfleet("status", "--router", r.url)
    assert done.returncode == 0
    rows = {line.split()[0]: line for line in done.stdout.splitlines()
            if line.strip().startswith("127.0.0.1")}
    asleep, failed = (rows[url.removeprefix("http://")] for url in stubs.urls)
    assert " yes " in asleep and " no " in failed
    assert " bytes, not text>" in failed and "\ufffd" not in done.stdout
    assert "True" not in done.stdout and "False" not in done.stdout
