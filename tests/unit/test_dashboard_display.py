"""The dashboard's pure display rules (router/dashboard/display.js), each called alone in a
headless Chromium page with nothing else loaded."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.procs import ROOT

DISPLAY_JS = ROOT / "router" / "dashboard" / "display.js"


@pytest.fixture(scope="module")
def page() -> Iterator[Page]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: apt-get install -y chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page()
        page.add_script_tag(content=DISPLAY_JS.read_text())
        yield page
        browser.close()


def call(page: Page, function: str, *args: Any) -> Any:
    return page.evaluate(f"(args) => {function}(...args)", list(args))


def test_printable_keeps_text_and_shows_a_binary_body_as_its_size(page: Page) -> None:
    assert call(page, "printable", "HTTP 503: node error\n") == "HTTP 503: node error\n"
    binary = bytes(range(256)).decode("utf-8", errors="replace") * 2
    assert call(page, "printable", f"HTTP 500: {binary}") == "HTTP 500: <512 bytes, not text>"
    assert call(page, "printable", "e" * 100 + "\ufffd") == "e" * 80 + "<21 bytes, not text>"


def node(server: str, used: int, total: int, measured_as: str, pool: str | None = None
         ) -> dict[str, Any]:
    memory = {"used_bytes": used, "total_bytes": total, "measured_as": measured_as}
    if pool is not None:
        memory["pool"] = pool
    return {"server": server, "memory": memory}


def test_memory_totals_count_each_pool_once_and_sum_what_is_used(page: Page) -> None:
    nodes = [node("http://127.0.0.1:1", 100, 4096, "process RSS"),
             node("http://127.0.0.1:2", 200, 4096, "process RSS"),
             node("http://10.0.0.2:1", 300, 8192, "process RSS"),
             node("http://10.0.0.3:1", 10, 80, "GPU", pool="GPU a"),
             node("http://10.0.0.3:2", 20, 80, "GPU", pool="GPU a"),
             node("http://10.0.0.3:3", 30, 80, "GPU", pool="GPU b"),
             {"server": "http://10.0.0.4:1", "memory": "unknown"}]
    assert call(page, "memoryTotals", nodes) == {"used": 660, "total": 4096 + 8192 + 160}


def test_the_timeline_scale_is_the_longest_operation(page: Page) -> None:
    operations = [{"elapsed_ms": 2, "nodes": [{"ended_ms": 2}]},
                  {"elapsed_ms": 1900, "nodes": [{"ended_ms": 2000}, {"ended_ms": 5}]}]
    assert call(page, "timelineScale", operations) == 2000
    assert call(page, "timelineScale", []) == 1


@pytest.mark.parametrize(("version", "label"), [
    ("step-2", "step-2"),
    (None, "no version"),
    ("unknown", "version unknown"),
    ("v\u0000\u0001", "v<2 bytes, not text>"),
])
def test_a_weight_version_reads_as_itself_and_one_not_known_says_so(
        page: Page, version: str | None, label: str) -> None:
    assert call(page, "versionLabel", version) == label
