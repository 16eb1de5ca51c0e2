"""Ranks in the trainer's weights-update group (`init_weights_update_group`).

The trainer is rank 0 and names the first node's first rank (`rank_offset`, normally 1) and
the group's size. Each SGLang-speaking target node joins with as many ranks as it runs (the
config's `ranks:`, e.g. its tensor-parallel size), so each needs its own `rank_offset`: the
body's for the first node, then one past the previous node's last rank, in the registry's
order (the config's order, then nodes added through `POST /workers`). vLLM nodes have no such
route and take no ranks. A group whose size does not match would wait for ranks that never
come (or refuse ranks past its end) until the deadline, so a mismatch is refused before any
node is called.
"""

from __future__ import annotations

import json

from pdfleet.vocabulary import EngineName
from router.control.request import BadControlRequest
from router.registry import Node


def rank_offsets(first: int, world_size: int, nodes: list[Node]) -> dict[str, int]:
    """Each joining node's first rank, by URL; BadControlRequest unless the ranks from
    `first` on fill the group exactly."""
    offsets: dict[str, int] = {}
    rank = first
    for node in nodes:
        if node.engine is EngineName.SGLANG:
            offsets[node.url] = rank
            rank += node.ranks
    if rank != world_size:
        raise BadControlRequest(
            f"world_size must be rank_offset + the target nodes' ranks = {first} + "
            f"{rank - first} = {rank} ({len(offsets)} SGLang-speaking nodes); got {world_size}")
    return offsets


def with_rank_offset(body: bytes, offset: int) -> bytes:
    """The init_weights_update_group body (a JSON object, already checked) for a node whose
    first rank is `offset`."""
    return json.dumps({**json.loads(body), "rank_offset": offset}).encode()
