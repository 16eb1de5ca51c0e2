"""What happened against what a step expected: each mismatch a sentence a CI log can show."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pdfleet.chaos.scenario import Bounds, NodeFailure, StepExpect

ERROR_KINDS = ("refused", "reset", "timeout", "other")
# How the router's `error` strings (router/http/errors.py: exception class and message) read,
# for replies that carry no machine-readable `kind`.
_ERROR_MARKERS = (
    ("refused", ("ConnectionRefused", "ClientConnectorError", "Connect call failed",
                 "Cannot connect")),
    ("timeout", ("TimeoutError", "timed out", "Timeout")),
    ("reset", ("ServerDisconnected", "Server disconnected", "ClientOSError", "Connection reset",
               "ConnectionResetError", "ClientPayloadError", "Response payload is not completed",
               "Connection lost")),
)


def error_kind(failure: dict[str, Any]) -> str:
    """refused | reset | timeout | other, from `kind` when the router gives one."""
    kind = failure.get("kind")
    if kind in ERROR_KINDS:
        return str(kind)
    text = str(failure.get("error") or "")
    for name, markers in _ERROR_MARKERS:
        if any(marker in text for marker in markers):
            return name
    return "other"


@dataclass
class NodeOutcome:
    """One node's part in a control reply."""

    ok: bool
    status: int | None = None
    error: str | None = None
    kind: str | None = None
    detail: str | None = None

    def describe(self) -> str:
        if self.ok:
            return "succeeded"
        if self.status is not None:
            return f"failed with status {self.status} ({(self.detail or '')[:120]!r})"
        return f"failed with error {self.kind} ({self.error})"


def node_outcomes(body: Any, names: dict[str, str]) -> dict[str, NodeOutcome]:
    """Per node name, from a router control reply (200 or 502 shape)."""
    by_url = {url: name for name, url in names.items()}
    outcomes: dict[str, NodeOutcome] = {}
    if not isinstance(body, dict):
        return outcomes
    detail = body.get("detail")
    if isinstance(detail, dict):
        for url in detail.get("succeeded") or []:
            outcomes[by_url.get(url, url)] = NodeOutcome(ok=True)
        for failure in detail.get("failures") or []:
            name = by_url.get(failure.get("server"), failure.get("server"))
            if failure.get("status") is not None:
                outcomes[name] = NodeOutcome(ok=False, status=failure["status"],
                                             detail=str(failure.get("detail", "")))
            else:
                outcomes[name] = NodeOutcome(ok=False, error=str(failure.get("error")),
                                             kind=error_kind(failure))
    for row in body.get("nodes") or []:
        outcomes[by_url.get(row.get("server"), row.get("server"))] = NodeOutcome(ok=True)
    return outcomes


def _bounds(what: str, value: float, bounds: Bounds) -> list[str]:
    if bounds.min is not None and value < bounds.min:
        return [f"{what} {value:.2f} s is below the expected minimum {bounds.min} s"]
    if bounds.max is not None and value > bounds.max:
        return [f"{what} {value:.2f} s is above the expected maximum {bounds.max} s"]
    return []


def _failure(name: str, want: NodeFailure, got: NodeOutcome) -> list[str]:
    expected = f"status {want.status}" if want.status is not None else f"error {want.error}"
    if got.ok or (want.status is not None and got.status != want.status) or (
            want.error is not None and got.kind != want.error):
        return [f"{name}: expected to fail with {expected}, but it {got.describe()}"]
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
            outcomes = node_outcomes(body, names)
            for name in names:
                got = outcomes.get(name)
                if got is None:
                    self.mismatches.append(f"{name}: missing from the router's reply")
                elif name in expect.failed:
                    self.mismatches += _failure(name, expect.failed[name], got)
                elif not got.ok:
                    self.mismatches.append(f"{name}: expected to succeed, but it {got.describe()}")
        text = body if isinstance(body, str) else json.dumps(body)
        for needle in expect.reply_contains:
            if needle not in text:
                self.mismatches.append(f"the router's reply lacks {needle!r}")
