"""`pdfleet chaos`: load the scenarios, start (or reach) the fleet, run, report.

Exit codes: 0 every scenario matched, 1 some did not, 2 the scenario file is unusable or the
fleet could not be started or reached.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.live import Live

from pdfleet.chaos.fleet import Checkpoints, Fleet, FleetUnavailable, start_local
from pdfleet.chaos.report import add_row, json_report, new_table, write_junit
from pdfleet.chaos.runner import ScenarioResult, run_all
from pdfleet.chaos.scenario import ChaosFile, ScenarioError, load_scenarios
from pdfleet.launcher import Child

DEFAULT_CONTROL_TIMEOUT_S = 120.0


async def _run(chaos: ChaosFile, router_url: str, urls: dict[str, str] | None,
               children: dict[str, Child], console: Console) -> list[ScenarioResult]:
    timeout_s = float(chaos.fleet.router.get("control_timeout_s", DEFAULT_CONTROL_TIMEOUT_S))
    table = new_table()
    # A connection per request: a kept-alive connection that a node (or the router) closes
    # for idleness just as the next request goes out would fail that request, and which one
    # it hits depends on timing.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)
                                     ) as session:
        checkpoints = Checkpoints(chaos.fleet)
        if urls is None:
            fleet = await Fleet.connect(router_url, chaos.fleet, session, checkpoints)
        else:
            fleet = Fleet(router_url, urls, session, children, checkpoints)
        with Live(table, console=console, refresh_per_second=4):
            return await run_all(fleet, chaos.scenarios, timeout_s,
                                 lambda result: add_row(table, result))


def run(scenarios_path: Path, junit_path: Path | None, json_path: Path | None,
        router_url: str | None, ready_timeout_s: float, console: Console,
        err: Callable[[str], None]) -> int:
    try:
        chaos = load_scenarios(scenarios_path)
    except ScenarioError as exc:
        err(f"scenario error: {exc}")
        return 2
    local = None
    urls: dict[str, str] | None = None
    children: dict[str, Child] = {}
    try:
        if router_url is None:
            local, urls, children = start_local(chaos.fleet, console, ready_timeout_s)
            router_url = local.router_url
            console.print(f"local fleet up: router at {router_url} (logs in {local.log_dir})")
        results = asyncio.run(_run(chaos, router_url, urls, children, console))
    except FleetUnavailable as exc:
        err(f"fleet unavailable: {exc}")
        return 2
    finally:
        if local is not None:
            local.stop()
    if junit_path is not None:
        write_junit(junit_path, results, scenarios_path.stem)
    if json_path is not None:
        report = json_report(results, str(scenarios_path), router_url)
        json_path.write_text(json.dumps(report, indent=2, default=str))
    passed = sum(r.passed for r in results)
    console.print(f"{passed}/{len(results)} scenarios matched")
    for result in results:
        if not result.passed:
            console.print(f"[red]{result.name}[/red]: "
                          + "; ".join([*([result.error] if result.error else []),
                                       *result.mismatches]))
    return 0 if passed == len(results) else 1
