"""`GET /dashboard` in a real headless Chromium against a real fleet: every node is
listed, a sleep through the router shows within seconds, the sleep button asks for the admin
token and shows the per-node report, and a node killed mid-test shows as down.

Chromium is Debian's (`apt-get install -y chromium`; `.ci/run` installs it), driven by
playwright with `executable_path`. The final screenshot is kept in $PDFLEET_ARTIFACTS (default:
the test's tmp dir) and, with PDFLEET_UPDATE_SCREENSHOT=1, written to docs/dashboard.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from tests.observability.conftest import RealNode, start_fleet, start_node
from tests.procs import ROOT, Process, Router, StubNodes, wait_http_ok

pytestmark = pytest.mark.timeout(180)

TOKEN = "dashboard-test-token"
SHOWN_WITHIN_MS = 5000


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Router, list[RealNode]]]:
    env = {"PDFLEET_ADMIN_TOKEN": TOKEN}
    nodes = start_fleet(env)
    mixed = start_node("mixed", env)
    nodes.append(mixed)
    router = None
    try:
        wait_http_ok(f"{mixed.url}/health", mixed.process, timeout=90)
        router = Router(tmp_path, [n.spec() for n in nodes], env=env, poll_interval_s=0.5)
        yield router, nodes
    finally:
        if router is not None:
            router.stop()
        for node in nodes:
            node.process.stop()


@pytest.fixture
def page() -> Iterator[Page]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        yield context.new_page()
        browser.close()


def card(page: Page, node: RealNode) -> Locator:
    return page.locator(f'article.card[data-server="{node.url}"]')


def release_through_router(router: Router, tags: list[str]) -> int:
    request = urllib.request.Request(
        f"{router.url}/release_memory_occupation", method="POST",
        data=json.dumps({"tags": tags}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_dashboard_shows_the_fleet_its_sleep_its_reports_and_a_dead_node(
    fleet: tuple[Router, list[RealNode]], page: Page, tmp_path: Path
) -> None:
    router, nodes = fleet
    page.goto(f"{router.url}/dashboard")
    for node in nodes:
        expect(card(page, node)).to_have_attribute("data-reachable", "up",
                                                   timeout=SHOWN_WITHIN_MS)
        expect(card(page, node).locator(".role")).to_have_text(node.role)
    expect(page.locator("#sum-up")).to_have_text(str(len(nodes)))
    # Every node is a process on this host: the total is this host's RAM once, not per node.
    host_ram = f"/ {psutil.virtual_memory().total / (1 << 30):.1f} GiB"
    expect(page.locator("#sum-memory")).to_have_text(re.compile(re.escape(host_ram) + "$"))

    # A sleep through the router (not the page) shows on every card within seconds.
    assert release_through_router(router, ["kv_cache"]) == 200
    for node in nodes:
        expect(card(page, node)).to_have_attribute("data-sleeping", "true",
                                                   timeout=SHOWN_WITHIN_MS)
        tag = card(page, node).locator('.tag[data-tag="kv_cache"]')
        expect(tag).to_have_attribute("data-state", "released")
        expect(card(page, node).locator('.tag[data-tag="weights"]')).to_have_attribute(
            "data-state", "resident")

    # The wake button: the router wants a token, the page asks for it, then reports.
    page.click("#btn-wake")
    expect(page.locator("#token-form")).to_be_visible(timeout=SHOWN_WITHIN_MS)
    page.fill("#token", TOKEN)
    page.click("#token-submit")
    expect(page.locator("#report .report-title")).to_contain_text(
        f"all {len(nodes)} nodes ok", timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#report tr")).to_have_count(len(nodes))
    for node in nodes:
        expect(card(page, node)).to_have_attribute("data-sleeping", "false",
                                                   timeout=SHOWN_WITHIN_MS)

    # The sleep button with the token now known: weights and kv_cache (the default choice).
    page.click("#btn-sleep")
    expect(page.locator("#report .report-title")).to_contain_text(
        f"all {len(nodes)} nodes ok", timeout=SHOWN_WITHIN_MS)
    for node in nodes:
        expect(card(page, node).locator('.tag[data-tag="weights"]')).to_have_attribute(
            "data-state", "released", timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#timeline .op")).to_have_count(3, timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#timeline .op").first.locator(".lane")).to_have_count(len(nodes))

    # A node killed mid-test shows as down, and the next operation's timeline marks it.
    dead = nodes[-1]
    dead.process.stop()
    expect(card(page, dead)).to_have_attribute("data-reachable", "down",
                                               timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#sum-down")).to_have_text("1")
    page.click("#btn-wake")
    expect(page.locator("#report .report-title")).to_contain_text(
        f"failed on 1/{len(nodes)} nodes", timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#timeline .op").first.locator(".span-failure")).to_have_count(1)
    assert release_through_router(router, ["weights", "kv_cache"]) == 502
    expect(page.locator("#timeline .op")).to_have_count(5, timeout=SHOWN_WITHIN_MS)

    artifacts = Path(os.environ.get("PDFLEET_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=artifacts / "dashboard.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    expect(card(page, nodes[0])).to_be_visible()
    page.screenshot(path=artifacts / "dashboard-phone.png", full_page=True)
    if os.environ.get("PDFLEET_UPDATE_SCREENSHOT") == "1":
        page.set_viewport_size({"width": 1280, "height": 900})
        page.screenshot(path=ROOT / "docs" / "dashboard.png", full_page=True)


def test_dashboard_keeps_refreshing_across_a_router_restart(
    stub_nodes: Callable[..., StubNodes], router: Callable[..., Router], page: Page
) -> None:
    stubs = stub_nodes([{}])
    r = router([{"url": stubs.urls[0], "role": "mixed"}])
    page.goto(f"{r.url}/dashboard")
    expect(page.locator("#connection")).to_have_class(re.compile("ok"), timeout=SHOWN_WITHIN_MS)
    r.stop()
    expect(page.locator("#connection")).to_have_class(re.compile("bad"), timeout=SHOWN_WITHIN_MS)
    # The same config, so the same port: what an operator's restart looks like.
    again = Process([sys.executable, "-m", "pdfleet", "router", "--config", str(r.config_path)])
    try:
        wait_http_ok(f"{r.url}/health", again)
        expect(page.locator("#connection")).to_have_class(re.compile("ok"),
                                                          timeout=SHOWN_WITHIN_MS)
        expect(page.locator("article.card")).to_have_count(1)
    finally:
        again.stop()


def post_control(router: Router, operation: str) -> int:
    request = urllib.request.Request(f"{router.url}/{operation}", method="POST", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_binary_errors_read_as_text_operations_share_one_scale_and_tags_have_a_legend(
    stub_nodes: Callable[..., StubNodes], router: Callable[..., Router], page: Page
) -> None:
    stubs = stub_nodes([
        {"routes": {"/release_memory_occupation": {"status": 500, "body": "binary"},
                    "/flush_cache": {"delay": 1.0}}},
        {},
    ])
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "decode"}])
    assert post_control(r, "flush_cache") == 200  # about 1 s: the slow node waits
    assert post_control(r, "resume_memory_occupation") == 200  # milliseconds
    assert post_control(r, "release_memory_occupation") == 502
    page.goto(f"{r.url}/dashboard")

    slow = page.locator(f'article.card[data-server="{stubs.urls[0]}"] .error')
    expect(slow).to_contain_text("bytes, not text>", timeout=SHOWN_WITHIN_MS)
    assert "\ufffd" not in slow.inner_text()
    box = slow.bounding_box()
    assert box is not None and box["height"] < 40  # one or two lines, not a wall

    operations = page.locator("#timeline .op")
    expect(operations).to_have_count(3, timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#timeline .timeline-scale")).to_contain_text("one scale")

    def widest_bar(op: Locator) -> float:
        return max(span.bounding_box()["width"] for span in op.locator(".span").all())

    resume, flush = operations.all()[1:]  # newest first, after the release
    assert widest_bar(resume) < 0.1 * widest_bar(flush)

    legend = page.locator("#tag-legend .tag")
    expect(legend).to_have_count(4)
    for state in ("resident", "released", "none", "unknown"):
        expect(page.locator(f"#tag-legend .tag-{state}")).to_be_visible()


def set_weight_version(stub_url: str, version: str) -> None:
    """New weights on a stub node, behind the router's back."""
    request = urllib.request.Request(f"{stub_url}/_stub/behavior", method="PUT",
                                     data=json.dumps({"weight_version": version}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200


def test_each_nodes_weight_version_shows_and_stale_nodes_are_marked(
    stub_nodes: Callable[..., StubNodes], router: Callable[..., Router], page: Page
) -> None:
    stubs = stub_nodes([{"weight_version": "step-2"}, {"weight_version": "step-2"},
                        {"weight_version": "step-1"}])
    r = router([{"url": url, "role": "mixed"} for url in stubs.urls])
    page.goto(f"{r.url}/dashboard")
    expect(page.locator("#sum-version")).to_have_text("step-2", timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#sum-stale")).to_have_text("1", timeout=SHOWN_WITHIN_MS)
    cards = [page.locator(f'article.card[data-server="{url}"]') for url in stubs.urls]
    for current in cards[:2]:
        expect(current.locator(".version")).to_have_text("step-2")
        expect(current).to_have_attribute("data-stale", "false")
        expect(current.locator(".stale-mark")).to_have_count(0)
    stale = cards[2]
    expect(stale.locator(".version")).to_have_text("step-1")
    expect(stale).to_have_attribute("data-stale", "true")
    expect(stale.locator(".stale-mark")).to_be_visible()
    expect(stale).to_have_class(re.compile(r"\bstale\b"))

    set_weight_version(stubs.urls[2], "step-2")  # it catches up: no longer marked
    expect(stale).to_have_attribute("data-stale", "false", timeout=SHOWN_WITHIN_MS)
    expect(page.locator("#sum-stale")).to_have_text("0")
