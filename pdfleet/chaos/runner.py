"""The scenario loop: before each scenario the fleet is reset (faults cleared, crashed nodes
restarted, every node awake in the router's view); then its faults are set, its steps run and
checked, its faults cleared and the nodes' final states checked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pdfleet.chaos.checks import StepCheck
from pdfleet.chaos.fleet import Fleet
from pdfleet.chaos.scenario import RouterCall, Scenario, Step, StepExpect, WaitFor
from pdfleet.chaos.traffic import run_traffic

RESET_WITHIN_S = 60.0
POLL_S = 0.1
HARNESS_ERRORS = (RuntimeError, aiohttp.ClientError, OSError, TimeoutError, ValueError)


@dataclass
class StepResult:
    description: str
    status: int | None = None
    elapsed_s: float = 0.0
    reply: Any = None
    traffic: dict[str, Any] | None = None
    mismatches: list[str] = field(default_factory=list)


@dataclass
class ScenarioResult:
    name: str
    description: str
    elapsed_s: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    final_mismatches: list[str] = field(default_factory=list)
    # The harness could not run the scenario (the fleet was not ready, a node admin call
    # failed): an error, not a mismatch.
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and not self.mismatches

    @property
    def mismatches(self) -> list[str]:
        found = [f"step {i + 1} ({step.description}): {m}"
                 for i, step in enumerate(self.steps) for m in step.mismatches]
        return found + [f"final state: {m}" for m in self.final_mismatches]


async def _wait_for(fleet: Fleet, wait: WaitFor) -> list[str]:
    wanted = {name: sorted(tags) for name, tags in wait.released_tags.items()}
    deadline = time.monotonic() + wait.within_s
    while True:
        got = {name: await fleet.released_tags(name) for name in wanted}
        if got == wanted:
            return []
        if time.monotonic() > deadline:
            return [f"wait_for: released tags still {got} after {wait.within_s} s, "
                    f"waited for {wanted}"]
        await asyncio.sleep(POLL_S)


async def _run_step(fleet: Fleet, step: Step, control_timeout_s: float) -> StepResult:
    result = StepResult(step.describe())
    if step.clear_faults:
        await fleet.clear_faults()
    if step.restart_crashed:
        await fleet.restart_crashed()
    for name, rules in step.faults.items():
        await fleet.add_faults(name, rules)
    if step.wait_for is not None:
        result.mismatches += await _wait_for(fleet, step.wait_for)
    check = StepCheck()
    if step.traffic is not None:
        started = time.monotonic()
        traffic = await run_traffic(fleet, step.traffic, control_timeout_s)
        result.elapsed_s = time.monotonic() - started
        result.traffic = traffic.summary()
        check.mismatches += traffic.mismatches(step.expect.traffic, step.traffic.cycles)
    else:
        call = step.call(step.operation)
        assert isinstance(call, RouterCall)
        before = await fleet.call_trace() if step.expect.no_node_called else None
        reply = await fleet.control(step.operation, call, control_timeout_s)
        result.status, result.reply, result.elapsed_s = reply.status, reply.body, reply.elapsed_s
        check.control(step.expect, reply.status, reply.body, reply.elapsed_s, fleet.urls)
        if before is not None:
            check.no_node_called(before, await fleet.call_trace())
    result.mismatches += check.mismatches + await _versions(fleet, step.expect)
    return result


async def _versions(fleet: Fleet, expect: StepExpect) -> list[str]:
    """The nodes' weight versions, and which the router shows stale, against `expect`."""
    problems = await _node_versions(fleet, expect.versions)
    if expect.stale is not None:
        names = {url: name for name, url in fleet.urls.items()}
        stale = sorted(names[n.server] for n in await fleet.router_view()
                       if n.server in names and n.stale)
        if stale != sorted(expect.stale):
            problems.append(f"the router shows stale {stale}, expected {sorted(expect.stale)}")
    return problems


async def _node_versions(fleet: Fleet, wanted: dict[str, str | None]) -> list[str]:
    problems = []
    for name, version in wanted.items():
        got = await fleet.weight_version(name)
        if got != version:
            problems.append(f"{name}: weight version {got!r}, expected {version!r}")
    return problems


async def _final(fleet: Fleet, scenario: Scenario) -> list[str]:
    problems = []
    for name, tags in scenario.final.released_tags.items():
        got = await fleet.released_tags(name)
        if got is None:
            problems.append(f"{name}: unreachable, expected released_tags {sorted(tags)}")
        elif got != sorted(tags):
            problems.append(f"{name}: released_tags {got}, expected {sorted(tags)}")
    for name in scenario.final.down:
        got = await fleet.released_tags(name)
        if got is not None:
            problems.append(f"{name}: expected down, but it answers (released_tags {got})")
    return problems + await _node_versions(fleet, scenario.final.versions)


async def _reset(fleet: Fleet) -> None:
    problems = await fleet.clear_faults()
    if problems:
        raise RuntimeError("; ".join(problems))
    await fleet.restart_crashed()
    await fleet.wake(RESET_WITHIN_S)
    await fleet.level(RESET_WITHIN_S)  # a node takes new weights only while they are resident


async def run_scenario(fleet: Fleet, scenario: Scenario, control_timeout_s: float
                       ) -> ScenarioResult:
    result = ScenarioResult(scenario.name, scenario.description)
    started = time.monotonic()
    try:
        await _reset(fleet)
    except HARNESS_ERRORS as exc:
        result.error = f"the fleet was not ready before this scenario: {exc}"
        return result
    try:
        for node in scenario.unreachable_nodes:
            await fleet.add_unreachable(node)
        for name, rules in scenario.faults.items():
            await fleet.add_faults(name, rules)
        for step in scenario.steps:
            result.steps.append(await _run_step(fleet, step, control_timeout_s))
        await fleet.clear_faults()
        result.final_mismatches = await _final(fleet, scenario)
    except HARNESS_ERRORS as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        for node in scenario.unreachable_nodes:
            try:
                await fleet.remove_unreachable(node)
            except HARNESS_ERRORS as exc:
                result.error = result.error or f"removing {node.name}: {exc}"
        result.elapsed_s = time.monotonic() - started
    return result


async def run_all(fleet: Fleet, scenarios: list[Scenario], control_timeout_s: float,
                  on_result: Callable[[ScenarioResult], None]) -> list[ScenarioResult]:
    results = []
    for scenario in scenarios:
        result = await run_scenario(fleet, scenario, control_timeout_s)
        on_result(result)
        results.append(result)
    try:
        await _reset(fleet)  # leave the fleet as it was found: awake, no faults
    except HARNESS_ERRORS:
        pass
    return results
