"""Ranks in a weights-update group: each SGLang-speaking node after the ranks before it."""

from __future__ import annotations

import json

import pytest

from pdfleet.vocabulary import EngineName, Role
from router.control.ranks import rank_offsets, with_rank_offset
from router.control.request import BadControlRequest
from router.registry import Node


def node(port: int, ranks: int, engine: EngineName = EngineName.SGLANG) -> Node:
    return Node(url=f"http://n:{port}", role=Role.DECODE, engine=engine, ranks=ranks)


def test_each_node_starts_after_the_ranks_of_the_nodes_before_it() -> None:
    nodes = [node(1, 2), node(2, 1), node(3, 4)]
    assert rank_offsets(1, 8, nodes) == {"http://n:1": 1, "http://n:2": 3, "http://n:3": 4}
    assert rank_offsets(5, 12, nodes) == {"http://n:1": 5, "http://n:2": 7, "http://n:3": 8}


def test_vllm_nodes_take_no_ranks() -> None:
    nodes = [node(1, 2), node(2, 8, EngineName.VLLM), node(3, 1)]
    assert rank_offsets(1, 4, nodes) == {"http://n:1": 1, "http://n:3": 3}


@pytest.mark.parametrize("world_size", [3, 5])
def test_a_group_whose_size_does_not_fit_is_refused(world_size: int) -> None:
    with pytest.raises(BadControlRequest, match=f"= 1 \\+ 3 = 4 .*; got {world_size}"):
        rank_offsets(1, world_size, [node(1, 2), node(2, 1)])


def test_an_empty_fleet_is_a_group_of_the_trainer_alone() -> None:
    assert rank_offsets(1, 1, []) == {}


def test_the_body_keeps_its_fields_with_the_nodes_rank_offset() -> None:
    body = b'{"master_address": "h", "rank_offset": 1, "world_size": 8, "x": [1]}'
    assert json.loads(with_rank_offset(body, 5)) == {
        "master_address": "h", "rank_offset": 5, "world_size": 8, "x": [1]}
