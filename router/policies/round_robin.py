"""Round robin: each candidate in turn."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from router.registry import Node


class RoundRobin:
    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, candidates: Sequence[Node]) -> Node:
        return candidates[next(self._turn) % len(candidates)]
