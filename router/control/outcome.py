"""What one node did with a control operation: the engines' answer to the fan-out.

Four things can happen, and each is its own type, so the fan-out and the registry read what
happened instead of inferring it from which fields are empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from router.http.errors import FailureKind


@dataclass(frozen=True, slots=True)
class Answered:
    """The node answered over HTTP, with a 2xx (`result` its JSON) or not (`detail` its
    error body, capped)."""

    status: int
    elapsed_ms: float
    result: Any = None
    detail: str | None = None
    # The node's released tags afterwards where the engine knows them; None leaves them to be
    # inferred from the operation (registry.tags_after).
    released_tags: list[str] | None = None
    memory: dict[str, Any] | None = None  # the node's memory afterwards, if it said
    # The weights the node serves afterwards, where the operation set them or the node said.
    weight_version: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """No complete answer came from the node (refused, reset, timeout, ...)."""

    error: str
    kind: FailureKind
    elapsed_ms: float


@dataclass(frozen=True, slots=True)
class NoOp:
    """The node needed no call: the operation would not change it."""

    result: Any = None


@dataclass(frozen=True, slots=True)
class Unsupported:
    """The node's engine cannot do what was asked, so no call was made."""

    reason: str


NodeOutcome = Answered | TransportFailed | NoOp | Unsupported
