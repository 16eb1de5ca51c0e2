"""What happened against what a step expected: each mismatch a sentence a CI log can show."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pdfleet.chaos.scenario import Bounds, NodeFailure, StepExpect
from router.control.report import ControlReport, NodeResult


def describe(row: NodeResult) -> str:
    if row.ok:
        return "succeeded"
    if row.status is not None:
        return f"failed with status {row.status} ({(row.detail or '')[:120]!r})"
    return f"failed with error {row.kind} ({row.error})"


def node_outcomes(status: int, body: Any, names: dict[str, str]) -> dict[str, NodeResult]:
    """Per node name, its row in a router control reply."""
    report = ControlReport.from_reply(status, body)
    if report is None:
        return {}
    by_url = {url: name for name, url in names.items()}
    return {by_url.get(row.server, row.server): row for row in report.results}


def _bounds(what: str, value: float, bounds: Bounds) -> list[str]:
    if bounds.min is not None and value < bounds.min:
        return [f"{what} {value:.2f} s is below the expected minimum {bounds.min} s"]
    if bounds.max is not None and value > bounds.max:
        return [f"{what} {value:.2f} s is above the expected maximum {bounds.max} s"]
    return []


def _failure(name: str, want: NodeFailure, got: NodeResult) -> list[str]:
    expected = f"status {want.status}" if want.status is not None else f"error {want.error}"
    if got.ok or (want.status is not None and got.status != want.status) or (
            want.error is not None and got.kind != want.error):
        return [f"{name}: expected to fail with {expected}, but it {describe(got)}"]
    problems = []
    detail = got.detail or ""
    if want.detail_contains is not None and want.detail_contains not in detail:
        problems.append(f"{name}: detail {detail[:200]!r} lacks {want.detail_contains!r}")
    if want.detail_max_chars is not None and len(detail) > want.detail_max_chars:
        problems.append(f"{name}: detail is {len(detail)} characters, more than "
                        f"{want.detail_max_chars}")
    return problems


@dataclass
class StepCheck:
    mismatches: list[str] = field(default_factory=list)

    def control(self, expect: StepExpect, status: int, body: Any, elapsed_s: float,
                names: dict[str, str]) -> None:
        if expect.status is not None and status != expect.status:
            self.mismatches.append(f"router answered {status}, expected {expect.status}")
        if expect.elapsed_s is not None:
            self.mismatches += _bounds("the operation took", elapsed_s, expect.elapsed_s)
        if expect.failed is not None:
            outcomes = node_outcomes(status, body, names)
            for name in names:
                got = outcomes.get(name)
                if got is None:
                    self.mismatches.append(f"{name}: missing from the router's reply")
                elif name in expect.failed:
                    self.mismatches += _failure(name, expect.failed[name], got)
                elif not got.ok:
                    self.mismatches.append(f"{name}: expected to succeed, but it {describe(got)}")
        text = body if isinstance(body, str) else json.dumps(body)
        for needle in expect.reply_contains:
            if needle not in text:
                self.mismatches.append(f"the router's reply lacks {needle!r}")

    def no_node_called(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """`before` and `after` are `Fleet.call_trace()`s around the step."""
        for what, was in before.items():
            if after.get(what) != was:
                self.mismatches.append(f"expected no node called, but {what} changed: "
                                       f"{was} before, {after.get(what)} after")
