"""Random: a uniformly random candidate, with no shared state to contend on."""

from __future__ import annotations

import random
from collections.abc import Sequence

from router.registry import Node


class RandomChoice:
    def pick(self, candidates: Sequence[Node]) -> Node:
        return random.choice(candidates)
