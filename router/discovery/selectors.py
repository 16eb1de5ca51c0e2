"""Kubernetes label selectors in their string form (`app=sglang,role in (prefill,mixed),!canary`),
parsed into the requirements lightkube's list and watch take, and matched against labels.

Kubernetes lets one key carry several requirements (`tier!=a,tier!=b`), which a mapping cannot
hold; lightkube's selector builder takes a list of (key, operator) pairs as well as a mapping,
so the parse keeps every requirement, in order, and narrows nothing a user may write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightkube.operators import Operator

# A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters;
# a value: empty, or a name of at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
_SET = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_COMPARE = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


class SelectorError(ValueError):
    """A selector that is not Kubernetes' label selector syntax; the message says where."""


class Match(StrEnum):
    EQUAL = "equal"
    NOT_EQUAL = "not_equal"
    IN = "in_"
    NOT_IN = "not_in"
    EXISTS = "exists"
    NOT_EXISTS = "not_exists"


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    match: Match
    values: tuple[str, ...] = ()

    def operator(self) -> Operator:
        """The requirement as lightkube's operator for `key`."""
        # Imported here: the fleet config parses selectors without loading the client.
        from lightkube import operators

        match self.match:
            case Match.EQUAL:
                return operators.equal(self.values[0])
            case Match.NOT_EQUAL:
                return operators.not_equal(self.values[0])
            case Match.IN:
                return operators.in_(self.values)
            case Match.NOT_IN:
                return operators.not_in(self.values)
            case Match.EXISTS:
                return operators.exists()
            case Match.NOT_EXISTS:
                return operators.not_exists()

    def matches(self, labels: dict[str, str]) -> bool:
        """Kubernetes' rule: `!=` and `notin` match objects without the key."""
        value = labels.get(self.key)
        match self.match:
            case Match.EQUAL | Match.IN:
                return value in self.values
            case Match.NOT_EQUAL | Match.NOT_IN:
                return value not in self.values
            case Match.EXISTS:
                return value is not None
            case Match.NOT_EXISTS:
                return value is None


@dataclass(frozen=True, slots=True)
class LabelSelector:
    text: str
    requirements: tuple[Requirement, ...]

    def labels(self) -> list[tuple[str, Operator]]:
        """What lightkube's `labels=` takes: (key, operator) pairs, every requirement kept."""
        return [(r.key, r.operator()) for r in self.requirements]

    def matches(self, labels: dict[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


def parse_selector(text: str) -> LabelSelector:
    """`text` as a selector; SelectorError naming the part that is wrong. An empty selector
    would select every pod in the namespace, which is never meant for one role: refused."""
    parts = _split(text)
    if not parts:
        raise SelectorError("a selector must name at least one label requirement")
    return LabelSelector(text=text, requirements=tuple(_requirement(p) for p in parts))


def _split(text: str) -> list[str]:
    """The comma-separated requirements; commas inside `( )` belong to a set."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in {text!r}")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    if depth:
        raise SelectorError(f"unbalanced '(' in {text!r}")
    parts.append(current.strip())
    if parts == [""]:
        return []
    if "" in parts:
        raise SelectorError(f"empty requirement in {text!r}")
    return parts


def _requirement(part: str) -> Requirement:
    if found := _SET.match(part):
        values = tuple(v.strip() for v in found["values"].split(","))
        if values == ("",):
            raise SelectorError(f"{part!r}: a set needs at least one value")
        match_ = Match.IN if found["op"] == "in" else Match.NOT_IN
        return Requirement(_key(found["key"], part), match_, tuple(_value(v, part) for v in values))
    if found := _COMPARE.match(part):
        match_ = Match.NOT_EQUAL if found["op"] == "!=" else Match.EQUAL
        return Requirement(_key(found["key"], part), match_, (_value(found["value"], part),))
    if part.startswith("!"):
        return Requirement(_key(part[1:].strip(), part), Match.NOT_EXISTS)
    return Requirement(_key(part, part), Match.EXISTS)


def _key(key: str, part: str) -> str:
    if not _KEY.match(key):
        raise SelectorError(f"{part!r}: {key!r} is not a label key")
    return key


def _value(value: str, part: str) -> str:
    if not _VALUE.match(value):
        raise SelectorError(f"{part!r}: {value!r} is not a label value")
    return value
