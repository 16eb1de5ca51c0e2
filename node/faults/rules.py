"""Fault rules: one pydantic model per kind, written as `key=value` pairs like toxiproxy's
attributes, or as the same keys in a JSON object (`POST /_admin/faults`).

    route=/release_memory_occupation,kind=status,code=500,body=binary,bytes=4096,times=2,p=0.5

Common keys: `route` (exact path or `*`), `kind`, `times` (the next N calls that fire, then the
rule is dropped; default unlimited), `p` (probability per matching call, default 1). Each kind
takes its own keys; a key the kind does not take is an error, so a typo never becomes a
silently ignored setting. Every error names the key.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails


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


DEFAULT_BINARY_BYTES = 4096
DEFAULT_HUGE_BYTES = 64 << 20
COMMON_KEYS = ("route", "kind", "p", "times")


class FaultRuleError(ValueError):
    """A malformed rule; `key` is the key at fault (the message names it too)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"fault rule key {key!r}: {message}")
        self.key = key


class _Rule(BaseModel):
    """The keys every kind takes."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind  # each kind narrows this to its own Literal, the union's tag
    route: str = Field(default="*", description="exact path, or * for every route")
    times: int | None = Field(default=None, ge=1, le=1 << 31,
                              description="fire on the next N matching calls, then drop the rule")
    p: float = Field(default=1.0, ge=0.0, le=1.0, description="probability per matching call")

    @field_validator("route")
    @classmethod
    def _route(cls, route: str) -> str:
        if route != "*" and not route.startswith("/"):
            raise ValueError(f"{route!r} is neither '*' nor a path starting with '/'")
        return route

    def matches(self, path: str | None) -> bool:
        """`path` None stands for every route (a resume reached by any of its routes)."""
        return path is None or self.route == "*" or self.route == path

    def spec(self) -> dict[str, Any]:
        """The rule's own keys (those it was given or defaults to), as a JSON object."""
        values: dict[str, Any] = {"route": self.route, "kind": self.kind.value, "p": self.p}
        if self.times is not None:
            values["times"] = self.times
        return values | self.model_dump(mode="json", exclude=set(COMMON_KEYS), exclude_none=True)


class DelayFault(_Rule):
    """Answer after `seconds`; the request is read first, so it takes effect even if the
    client gives up."""

    kind: Literal[FaultKind.DELAY]
    seconds: float = Field(ge=0.0, le=86400.0)


class HangFault(_Rule):
    """Never answer, until the rules are cleared or the client goes away."""

    kind: Literal[FaultKind.HANG]


class StatusFault(_Rule):
    """Answer `code` without calling the node, with a body of the chosen shape."""

    kind: Literal[FaultKind.STATUS]
    code: int = Field(ge=100, le=599)
    body: StatusBody = StatusBody.TEXT
    bytes: int | None = Field(default=None, ge=0, le=1 << 40,
                              description="length of a binary or huge body")

    @model_validator(mode="after")
    def _body_length(self) -> Self:
        if self.body in (StatusBody.TEXT, StatusBody.JSON):
            self.bytes = None  # text and json bodies have their own length
        elif self.bytes is None:
            huge = self.body is StatusBody.HUGE
            self.bytes = DEFAULT_HUGE_BYTES if huge else DEFAULT_BINARY_BYTES
        return self


class ResetFault(_Rule):
    """Drop the connection with a TCP reset, before the headers or halfway through the body."""

    kind: Literal[FaultKind.RESET]
    at: ResetAt = ResetAt.HEADERS


class SlowBodyFault(_Rule):
    """Send the node's real reply at `rate` bytes per second."""

    kind: Literal[FaultKind.SLOW_BODY]
    rate: float = Field(ge=1.0, le=float(1 << 40))


class CrashFault(_Rule):
    """Exit the process with `code` once the node starts its reply: the operation ran."""

    kind: Literal[FaultKind.CRASH]
    code: int = Field(default=1, ge=0, le=255)


class OomOnResumeFault(_Rule):
    """The next resume finds no free device memory (507)."""

    kind: Literal[FaultKind.OOM_ON_RESUME]


FaultRule = Annotated[
    DelayFault | HangFault | StatusFault | ResetFault | SlowBodyFault | CrashFault
    | OomOnResumeFault,
    Field(discriminator="kind"),
]
_RULE = TypeAdapter(FaultRule)
# Each model by its tag, the one value of its `kind` Literal.
KIND_MODELS: dict[FaultKind, type[_Rule]] = {
    get_args(model.model_fields["kind"].annotation)[0]: model for model in _Rule.__subclasses__()
}


def _rule_error(error: ErrorDetails, kind: Any) -> FaultRuleError:
    """Our error for pydantic's first one: the key it is about, in the rule's terms."""
    kinds = "|".join(FaultKind)
    key = str(error["loc"][-1]) if error["loc"] else "kind"
    match error["type"]:
        case "union_tag_not_found":
            return FaultRuleError(key, f"missing (one of {kinds})")
        case "union_tag_invalid":
            return FaultRuleError(key, f"{kind!r} is not one of {kinds}")
        case "extra_forbidden":
            own = [k for k in KIND_MODELS[FaultKind(kind)].model_fields if k not in COMMON_KEYS]
            takes = ", ".join(own) or "no keys of its own"
            return FaultRuleError(key, f"unknown for kind {kind} (it takes {takes})")
        case "missing":
            return FaultRuleError(key, f"missing: kind {kind} needs it")
        case "value_error":  # ours, which quote the value themselves
            return FaultRuleError(key, error["msg"].removeprefix("Value error, "))
    return FaultRuleError(key, f"{error['input']!r}: {error['msg']}")


def rule_from_mapping(values: Mapping[str, Any]) -> FaultRule:
    """A rule from its keys (strings, or JSON numbers from the admin route)."""
    for key, value in values.items():
        # pydantic would read true as 1: a JSON rule takes only what the text form can say.
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise FaultRuleError(key, f"{value!r} is not a string or a number")
    try:
        return _RULE.validate_python(values)
    except ValidationError as error:
        # An unknown key is named before a missing one: "sekonds" explains "seconds missing".
        first = min(error.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise _rule_error(first, values.get("kind")) from None


def parse_rule(text: str) -> FaultRule:
    """A rule from its `key=value,...` text."""
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise FaultRuleError(key, "expected key=value")
        if key in values:
            raise FaultRuleError(key, "given twice")
        values[key] = value
    return rule_from_mapping(values)


@dataclass
class ArmedRule:
    """A rule in force: its id in the set and how often it fired."""

    id: int
    rule: FaultRule
    fired: int = 0

    def view(self) -> dict[str, Any]:
        times = self.rule.times
        remaining = None if times is None else times - self.fired
        return {"id": self.id, **self.rule.spec(), "fired": self.fired, "remaining": remaining}


class FaultSet:
    """The rules in force, in the order they were added; the first that fires wins."""

    def __init__(self, rules: Iterable[FaultRule] = (), seed: int | None = None) -> None:
        self._armed: list[ArmedRule] = []
        self._ids = itertools.count(1)
        self._random = random.Random(seed)
        self._cleared = asyncio.Event()
        for rule in rules:
            self.add(rule)

    def add(self, rule: FaultRule) -> ArmedRule:
        armed = ArmedRule(next(self._ids), rule)
        self._armed.append(armed)
        return armed

    def views(self) -> list[dict[str, Any]]:
        return [armed.view() for armed in self._armed]

    @property
    def cleared(self) -> asyncio.Event:
        """Set by the next `clear`: a call held by a `hang` rule ends then."""
        return self._cleared

    def clear(self) -> int:
        count = len(self._armed)
        self._armed.clear()
        self._cleared.set()
        self._cleared = asyncio.Event()
        return count

    def take(self, path: str | None, kinds: frozenset[FaultKind]) -> FaultRule | None:
        """The rule that fires for this call, its count taken; None when none does. Rules of
        other kinds are not consulted (and keep their count)."""
        for armed in self._armed:
            rule = armed.rule
            if rule.kind not in kinds or not rule.matches(path):
                continue
            if rule.p < 1.0 and self._random.random() >= rule.p:
                continue
            armed.fired += 1
            if rule.times is not None and armed.fired >= rule.times:
                self._armed.remove(armed)
            return rule
        return None


REQUEST_KINDS = frozenset(FaultKind) - {FaultKind.OOM_ON_RESUME}
RESUME_KINDS = frozenset({FaultKind.OOM_ON_RESUME})
