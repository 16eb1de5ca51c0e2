"""Fault rules: `key=value` pairs, comma-separated, like toxiproxy's attributes.

    route=/release_memory_occupation,kind=status,code=500,body=binary,bytes=4096,times=2,p=0.5

Common keys: `route` (exact path or `*`), `kind`, `times` (the next N calls that fire, then the
rule is dropped; default unlimited), `p` (probability per matching call, default 1). Each kind
takes its own keys (`KIND_KEYS`); a key the kind does not take is an error, so a typo never
becomes a silently ignored setting. Every error names the key.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class FaultKind(StrEnum):
    DELAY = "delay"
    HANG = "hang"
    STATUS = "status"
    RESET = "reset"
    SLOW_BODY = "slow_body"
    CRASH = "crash"
    OOM_ON_RESUME = "oom_on_resume"


class StatusBody(StrEnum):
    TEXT = "text"
    JSON = "json"
    BINARY = "binary"
    HUGE = "huge"


class ResetAt(StrEnum):
    HEADERS = "headers"
    BODY = "body"


COMMON_KEYS = ("route", "kind", "times", "p")
# Per kind: its keys, and which of them must be given.
KIND_KEYS: dict[FaultKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    FaultKind.DELAY: (("seconds",), ("seconds",)),
    FaultKind.HANG: ((), ()),
    FaultKind.STATUS: (("code", "body", "bytes"), ("code",)),
    FaultKind.RESET: (("at",), ()),
    FaultKind.SLOW_BODY: (("rate",), ("rate",)),
    FaultKind.CRASH: (("code",), ()),
    FaultKind.OOM_ON_RESUME: ((), ()),
}
DEFAULT_BINARY_BYTES = 4096
DEFAULT_HUGE_BYTES = 64 << 20
DEFAULT_CRASH_CODE = 1


class FaultRuleError(ValueError):
    """A malformed rule; `key` is the key at fault (the message names it too)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"fault rule key {key!r}: {message}")
        self.key = key


@dataclass
class FaultRule:
    kind: FaultKind
    route: str = "*"
    times: int | None = None
    p: float = 1.0
    seconds: float = 0.0
    code: int = 0
    body: StatusBody = StatusBody.TEXT
    bytes: int = 0
    at: ResetAt = ResetAt.HEADERS
    rate: float = 0.0
    id: int = 0
    fired: int = 0

    def matches(self, path: str | None) -> bool:
        """`path` None stands for every route (a resume reached by any of its routes)."""
        return path is None or self.route == "*" or self.route == path

    def spec(self) -> dict[str, Any]:
        """The rule's own keys (those it was given or defaults to), as a JSON object."""
        own, _ = KIND_KEYS[self.kind]
        values: dict[str, Any] = {"route": self.route, "kind": self.kind.value, "p": self.p}
        if self.times is not None:
            values["times"] = self.times
        for key in own:
            if key == "bytes" and self.body not in (StatusBody.BINARY, StatusBody.HUGE):
                continue  # text and json bodies have their own length
            value = getattr(self, key)
            values[key] = value.value if isinstance(value, StrEnum) else value
        return values

    def view(self) -> dict[str, Any]:
        remaining = None if self.times is None else self.times - self.fired
        return {"id": self.id, **self.spec(), "fired": self.fired, "remaining": remaining}


def _number(key: str, raw: str, kind: type[int] | type[float], low: float, high: float) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise FaultRuleError(key, f"{raw!r} is not {expected}") from None
    if not low <= value <= high:
        raise FaultRuleError(key, f"{raw} is outside [{low:g}, {high:g}]")
    return value


def _choice(key: str, raw: str, enum: type[StrEnum]) -> Any:
    try:
        return enum(raw)
    except ValueError:
        allowed = "|".join(e.value for e in enum)
        raise FaultRuleError(key, f"{raw!r} is not one of {allowed}") from None


def rule_from_mapping(values: Mapping[str, Any]) -> FaultRule:
    """A rule from its keys (strings, or JSON numbers from the admin route)."""
    pairs: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FaultRuleError(str(key), f"{value!r} is not a string or a number")
        pairs[str(key)] = str(value)
    if "kind" not in pairs:
        raise FaultRuleError("kind", "missing (one of " + "|".join(FaultKind) + ")")
    kind = _choice("kind", pairs["kind"], FaultKind)
    own, required = KIND_KEYS[kind]
    for key in pairs:
        if key not in COMMON_KEYS and key not in own:
            takes = ", ".join(own) or "no keys of its own"
            raise FaultRuleError(key, f"unknown for kind {kind.value} (it takes {takes})")
    for key in required:
        if key not in pairs:
            raise FaultRuleError(key, f"missing: kind {kind.value} needs it")
    rule = FaultRule(kind=kind)
    route = pairs.get("route", "*")
    if route != "*" and not route.startswith("/"):
        raise FaultRuleError("route", f"{route!r} is neither '*' nor a path starting with '/'")
    rule.route = route
    if "times" in pairs:
        rule.times = _number("times", pairs["times"], int, 1, 1 << 31)
    if "p" in pairs:
        rule.p = _number("p", pairs["p"], float, 0.0, 1.0)
    if "seconds" in pairs:
        rule.seconds = _number("seconds", pairs["seconds"], float, 0.0, 86400.0)
    if "rate" in pairs:
        rule.rate = _number("rate", pairs["rate"], float, 1.0, float(1 << 40))
    if "at" in pairs:
        rule.at = _choice("at", pairs["at"], ResetAt)
    if kind is FaultKind.STATUS:
        rule.code = _number("code", pairs["code"], int, 100, 599)
        rule.body = _choice("body", pairs.get("body", "text"), StatusBody)
        default_bytes = DEFAULT_HUGE_BYTES if rule.body is StatusBody.HUGE else DEFAULT_BINARY_BYTES
        rule.bytes = _number("bytes", pairs.get("bytes", str(default_bytes)), int, 0, 1 << 40)
    if kind is FaultKind.CRASH:
        rule.code = _number("code", pairs.get("code", str(DEFAULT_CRASH_CODE)), int, 0, 255)
    return rule


def parse_rule(text: str) -> FaultRule:
    """A rule from its `key=value,...` text."""
    values: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise FaultRuleError(key, "expected key=value")
        if key in values:
            raise FaultRuleError(key, "given twice")
        values[key] = value.strip()
    return rule_from_mapping(values)


class FaultSet:
    """The rules in force, in the order they were added; the first that fires wins."""

    def __init__(self, rules: Iterable[FaultRule] = (), seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._random = random.Random(seed)
        self._cleared = asyncio.Event()
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> FaultRule:
        rule.id = next(self._ids)
        self._rules.append(rule)
        return rule

    def views(self) -> list[dict[str, Any]]:
        return [rule.view() for rule in self._rules]

    @property
    def cleared(self) -> asyncio.Event:
        """Set by the next `clear`: a call held by a `hang` rule ends then."""
        return self._cleared

    def clear(self) -> int:
        count = len(self._rules)
        self._rules.clear()
        self._cleared.set()
        self._cleared = asyncio.Event()
        return count

    def take(self, path: str | None, kinds: frozenset[FaultKind]) -> FaultRule | None:
        """The rule that fires for this call, its count taken; None when none does. Rules of
        other kinds are not consulted (and keep their count)."""
        for rule in self._rules:
            if rule.kind not in kinds or not rule.matches(path):
                continue
            if rule.p < 1.0 and self._random.random() >= rule.p:
                continue
            rule.fired += 1
            if rule.times is not None and rule.fired >= rule.times:
                self._rules.remove(rule)
            return rule
        return None


REQUEST_KINDS = frozenset(FaultKind) - {FaultKind.OOM_ON_RESUME}
RESUME_KINDS = frozenset({FaultKind.OOM_ON_RESUME})
