"""Least outstanding: the candidate with the fewest requests this router has in flight on it.

Ties go to the first candidate in registry order, so an idle fleet fills predictably.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter

from router.registry import Node

_OUTSTANDING = attrgetter("outstanding")


class LeastOutstanding:
    def pick(self, candidates: Sequence[Node]) -> Node:
        return min(candidates, key=_OUTSTANDING)
