"""The refit's control requests: bodies checked by their models, vLLM's pause merged with
SGLang's, /fanout's path and query, and which weight updates a node needs."""

from __future__ import annotations

import json

import pytest
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import EngineName, Operation, Role
from router.control.fanout import already_updated
from router.control.outcome import NoOp
from router.control.request import (
    BadControlRequest,
    ControlRequest,
    control_request,
    fanout_request,
    node_path,
)
from router.engines.base import ControlCall, weight_version_after
from router.registry import Node


def make(operation: Operation, body: bytes = b"", query: str = "",
         dialect: EngineName = EngineName.SGLANG) -> ControlRequest:
    return control_request(operation, body, QueryParams(query), content_type="application/json",
                           authorization=None, default_timeout_s=30.0, dialect=dialect)


def refusal(operation: Operation, body: bytes = b"", query: str = "",
            dialect: EngineName = EngineName.SGLANG) -> str:
    with pytest.raises(BadControlRequest) as refused:
        make(operation, body, query, dialect)
    return str(refused.value)


def test_a_pause_body_goes_verbatim_with_its_mode_and_vllms_query_for_it() -> None:
    raw = b'{"mode": "in_place",  "x": 1}'
    request = make(Operation.PAUSE, raw)
    assert (request.body, request.pause_mode, request.query) == (raw, "in_place", "mode=keep")
    assert make(Operation.PAUSE).pause_mode == "abort"
    assert make(Operation.PAUSE, b'{"mode": "retract"}').query == ""


@pytest.mark.parametrize(("query", "mode", "forwarded"), [
    ("", "abort", ""),
    ("mode=keep", "in_place", "mode=keep"),
    ("mode=wait&clear_cache=False&timeout=3&role=decode", "wait", "mode=wait&clear_cache=False"),
])
def test_vllms_pause_query_goes_to_vllm_as_it_came_and_to_sglang_as_a_mode(
        query: str, mode: str, forwarded: str) -> None:
    request = make(Operation.PAUSE, b"", query, EngineName.VLLM)
    assert (request.pause_mode, request.query) == (mode, forwarded)
    assert json.loads(request.body) == {"mode": mode}


def test_an_sglang_body_on_vllms_pause_gives_the_mode_when_the_query_does_not() -> None:
    request = make(Operation.PAUSE, b'{"mode": "in_place"}', "", EngineName.VLLM)
    assert (request.pause_mode, request.query) == ("in_place", "mode=keep")
    assert "disagree" in refusal(Operation.PAUSE, b'{"mode": "retract"}', "mode=abort",
                                 EngineName.VLLM)


@pytest.mark.parametrize(("operation", "raw", "message"), [
    (Operation.PAUSE, b'{"mode": "wait"}', "mode must be one of abort, retract, in_place"),
    (Operation.UPDATE_FROM_DISK, b"", "missing field 'model_path'"),
    (Operation.UPDATE_FROM_DISK, b'{"model_path": "/c", "abort_all_requests": 1}',
     "field 'abort_all_requests': Input should be a valid boolean, got 1"),
    (Operation.UPDATE_FROM_DISK, b'{"model_path": "/c", "weight_versoin": "v2"}',
     "unknown field 'weight_versoin' (did you mean 'weight_version'?)"),
    (Operation.INIT_WEIGHTS_GROUP, b'{"master_address": "h", "master_port": 0, '
                                   b'"rank_offset": 1, "world_size": 2}',
     "field 'master_port': Input should be greater than or equal to 1, got 0"),
    (Operation.UPDATE_FROM_DISTRIBUTED, b'{"names": "w", "dtypes": [], "shapes": []}',
     "field 'names': Input should be a valid list, got 'w'"),
])
def test_a_bad_refit_body_is_refused_naming_the_field(operation: Operation, raw: bytes,
                                                      message: str) -> None:
    assert refusal(operation, raw).startswith(message)


def test_a_weight_update_carries_its_version_and_force_only_weight_updates_read() -> None:
    raw = b'{"model_path": "/c", "weight_version": "v2"}'
    request = make(Operation.UPDATE_FROM_DISK, raw, "force=true")
    assert (request.model_path, request.weight_version, request.force) == ("/c", "v2", True)
    assert make(Operation.UPDATE_FROM_DISK, raw).force is False
    paused = make(Operation.PAUSE, b'{"weight_version": "v2", "world_size": 3}', "force=true")
    assert (paused.weight_version, paused.force, paused.world_size) == (None, False, None)


def test_fanout_keeps_its_query_but_the_routers_keys_and_checks_them() -> None:
    request = fanout_request("/v1/load_lora_adapter/", b"x", QueryParams(
        "a=1&a=2&engine=vllm&role=decode&timeout=4"), content_type="text/plain",
        authorization=None, default_timeout_s=30)
    assert (request.path, request.query, request.body, request.engine, request.timeout_s) == (
        "v1/load_lora_adapter", "a=1&a=2", b"x", EngineName.VLLM, 4.0)
    with pytest.raises(BadControlRequest, match="query key 'engine' is given more than once"):
        fanout_request("x", b"", QueryParams("engine=vllm&engine=sglang"), content_type=None,
                       authorization=None, default_timeout_s=30)


@pytest.mark.parametrize(("path", "quoted"), [
    ("load_lora_adapter", "load_lora_adapter"), ("a?b", "a%3Fb"), ("a b/c", "a%20b/c")])
def test_a_fanout_path_is_quoted_again_so_it_stays_a_path(path: str, quoted: str) -> None:
    assert node_path(path) == quoted


@pytest.mark.parametrize("path", ["", "/", "a/../b", "a//b", "./a"])
def test_a_fanout_path_that_names_no_route_is_refused(path: str) -> None:
    with pytest.raises(BadControlRequest, match="fanout path must name a node route"):
        node_path(path)


def call(operation: Operation, weight_version: str | None) -> ControlCall:
    return ControlCall(operation=operation, body=b"{}", headers={}, tags=None, level=1,
                       mode=None, deadline=0.0, released_tags=frozenset(),
                       weight_version=weight_version)


def node(version: str | None, known: bool = True) -> Node:
    return Node(url="http://n:1", role=Role.MIXED, weight_version=version,
                weight_version_known=known)


def test_a_weight_update_is_a_no_op_only_for_a_node_known_to_be_at_its_version() -> None:
    update = call(Operation.UPDATE_FROM_DISK, "v2")
    assert already_updated(node("v2"), update) == NoOp({"noop": "already at v2"})
    assert already_updated(node("v1"), update) is None
    assert already_updated(node(None, known=False), update) is None
    assert already_updated(node("v2"), call(Operation.UPDATE_FROM_DISK, None)) is None
    assert already_updated(node("v2"), call(Operation.PAUSE, "v2")) is None
    assert already_updated(node("v2"), call(Operation.UPDATE_FROM_DISTRIBUTED, "v2")) == NoOp(
        {"noop": "already at v2"})


def test_the_version_after_an_update_is_the_nodes_word_else_the_updates() -> None:
    update = call(Operation.UPDATE_FROM_DISK, "v2")
    assert weight_version_after(update, {"weight_version": "v2-node"}) == "v2-node"
    assert weight_version_after(update, {"success": True}) == "v2"
    assert weight_version_after(update, None) == "v2"
    assert weight_version_after(call(Operation.UPDATE_FROM_DISK, None), None) is None
    assert weight_version_after(call(Operation.PAUSE, "v2"), {"weight_version": "x"}) is None
