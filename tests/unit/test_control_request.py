"""The control body and query: validated by the body models, merged for vLLM's routes."""

from __future__ import annotations

import json

import pytest
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import EngineName, Operation, Role
from router.control.request import (
    BadControlRequest,
    ControlRequest,
    ReleaseBody,
    control_request,
    edit_distance,
    near_miss,
)


def make(operation: Operation, body: bytes = b"", query: str = "",
         dialect: EngineName = EngineName.SGLANG) -> ControlRequest:
    return control_request(operation, body, QueryParams(query),
                           content_type="text/plain", authorization=None,
                           default_timeout_s=30.0, dialect=dialect)


def refusal(operation: Operation, body: bytes = b"", query: str = "") -> str:
    with pytest.raises(BadControlRequest) as refused:
        make(operation, body, query)
    return str(refused.value)


def test_an_empty_body_is_every_tag() -> None:
    request = make(Operation.RELEASE)
    assert request.tags is None and request.body == b"" and request.timeout_s == 30.0


def test_a_good_body_is_forwarded_byte_for_byte_with_its_content_type() -> None:
    raw = b'{"tags": ["kv_cache"],  "extra": {"kept": true}}'
    request = make(Operation.RELEASE, raw)
    assert request.body == raw and request.content_type == "text/plain"
    assert request.tags == ["kv_cache"]


def test_the_body_is_described_by_the_same_model_that_validates_it() -> None:
    body = ReleaseBody.parse(b'{"tags": ["weights"], "drain": "wait", "x": 1}')
    assert body is not None and body.drain == "wait" and body.model_extra == {"x": 1}


@pytest.mark.parametrize(("raw", "message"), [
    (b"{", "request body is not valid JSON"),
    (b"[1, 2]", "request body must be a JSON object"),
    (b'{"tags": []}', "tags must be null or a non-empty list of strings, got []"),
    (b'{"tags": "weights"}', "tags must be null or a non-empty list of strings, got 'weights'"),
    (b'{"tags": [1]}', "tags must be null or a non-empty list of strings, got [1]"),
    (b'{"drain": "later"}', "drain must be one of abort, wait; got 'later'"),
    (b'{"drain": null}', "drain must be one of abort, wait; got None"),
])
def test_a_bad_body_is_refused_with_what_is_wrong(raw: bytes, message: str) -> None:
    assert refusal(Operation.RELEASE, raw).startswith(message)


def test_the_query_tags_of_wake_up_become_body_tags() -> None:
    request = make(Operation.RESUME, b"", "tags=weights&tags=kv_cache")
    assert request.tags == ["weights", "kv_cache"]
    assert json.loads(request.body) == {"tags": ["weights", "kv_cache"]}
    assert request.content_type == "application/json"


def test_a_comma_list_of_query_tags_works_too() -> None:
    assert make(Operation.RESUME, b"", "tags=weights,kv_cache").tags == ["weights", "kv_cache"]


def test_query_tags_that_name_no_tag_are_refused() -> None:
    assert refusal(Operation.RESUME, b"", "tags=,") == (
        "tags in the query must name at least one tag")


def test_query_and_body_tags_must_agree() -> None:
    agreeing = make(Operation.RELEASE, b'{"tags": ["kv_cache", "weights"]}',
                    "tags=weights,kv_cache")
    assert agreeing.tags == ["weights", "kv_cache"]
    assert "disagree" in refusal(Operation.RELEASE, b'{"tags": ["weights"]}', "tags=kv_cache")
    assert "disagree" in refusal(Operation.RELEASE, b'{"tags": null}', "tags=kv_cache")


def test_sleeps_mode_becomes_the_drain_field_and_must_agree_with_the_body() -> None:
    request = make(Operation.RELEASE, b'{"other": 1}', "mode=abort&level=2")
    assert json.loads(request.body) == {"other": 1, "drain": "abort"}
    assert (request.mode, request.level) == ("abort", 2)
    assert refusal(Operation.RELEASE, b'{"drain": "wait"}', "mode=abort") == (
        "the query's mode 'abort' and the body's drain 'wait' disagree")


def test_the_body_drain_is_the_mode_of_a_release_only() -> None:
    assert make(Operation.RELEASE, b'{"drain": "wait"}').mode == "wait"
    assert make(Operation.RESUME, b'{"drain": "wait"}').mode is None


def test_flush_ignores_vllms_query_fields() -> None:
    request = make(Operation.FLUSH, b"", "tags=weights&mode=abort&level=9")
    assert request.body == b"" and request.tags is None


@pytest.mark.parametrize(("query", "message"), [
    ("level=3", "level must be one of 1, 2; got '3'"),
    ("mode=later", "mode must be one of abort, wait; got 'later'"),
    ("timeout=0", "timeout must be seconds in (0, 86400], got '0'"),
    ("timeout=soon", "timeout must be seconds in (0, 86400], got 'soon'"),
    ("role=leader", "role must be one of prefill, decode, mixed; got 'leader'"),
    ("on_failure=retry", "on_failure must be 'rollback', got 'retry'"),
])
def test_a_bad_query_is_refused_with_what_is_wrong(query: str, message: str) -> None:
    assert refusal(Operation.RELEASE, b"", query) == message


def test_rollback_applies_to_release_only() -> None:
    assert make(Operation.RELEASE, b"", "on_failure=rollback").rollback
    assert refusal(Operation.RESUME, b"", "on_failure=rollback") == (
        "on_failure=rollback applies to release only")


def test_role_and_timeout_come_from_the_query() -> None:
    request = make(Operation.FLUSH, b"", "role=decode&timeout=2.5")
    assert (request.role, request.timeout_s) == (Role.DECODE, 2.5)


@pytest.mark.parametrize(("name", "fields", "meant"), [
    ("tagz", ["tags"], "tags"),
    ("tag", ["tags"], "tags"),
    ("Tags", ["tags"], "tags"),
    ("TAGS", ["tags"], "tags"),
    ("drain_timeout", ["tags", "drain", "drain_timeout_s"], "drain_timeout_s"),
    ("dran", ["tags", "drain", "drain_timeout_s"], "drain"),
    ("extra_field", ["tags", "drain", "drain_timeout_s"], None),
    ("flush", ["tags"], None),
    ("tags", [], None),
])
def test_a_near_miss_is_a_field_within_two_edits_case_ignored(
        name: str, fields: list[str], meant: str | None) -> None:
    assert near_miss(name, fields) == meant


def test_edit_distance_counts_insertions_deletions_and_substitutions() -> None:
    assert [edit_distance(a, b) for a, b in [
        ("tags", "tags"), ("tag", "tags"), ("tagz", "tags"), ("gats", "tags"), ("", "abc")]
    ] == [0, 1, 1, 2, 3]


@pytest.mark.parametrize(("operation", "raw", "message"), [
    (Operation.RELEASE, b'{"tagz": ["weights"]}', "unknown field 'tagz' (did you mean 'tags'?)"),
    (Operation.RESUME, b'{"Tags": null}', "unknown field 'Tags' (did you mean 'tags'?)"),
    (Operation.RELEASE, b'{"drain_timeout": 5}',
     "unknown field 'drain_timeout' (did you mean 'drain_timeout_s'?)"),
])
def test_a_misspelt_field_of_the_route_is_refused_naming_the_field_meant(
        operation: Operation, raw: bytes, message: str) -> None:
    assert refusal(operation, raw) == message


def test_fields_far_from_the_routes_pass_through_and_flush_has_none_to_miss() -> None:
    raw = b'{"tags": ["weights"], "extra_field": 1, "rid": "abc"}'
    assert make(Operation.RELEASE, raw).body == raw
    assert make(Operation.RESUME, b'{"drain": "wait"}').body == b'{"drain": "wait"}'
    assert make(Operation.FLUSH, b'{"tagz": 1}').body == b'{"tagz": 1}'


@pytest.mark.parametrize(("operation", "raw", "query"), [
    (Operation.RELEASE, b'{"tags": ["weight"]}', ""),
    (Operation.RESUME, b"", "tags=bogus"),
    (Operation.RESUME, b"", "tags=weights&tags=bogus"),
])
def test_an_unknown_tag_in_the_body_or_query_is_refused_naming_the_valid_tags(
        operation: Operation, raw: bytes, query: str) -> None:
    assert refusal(operation, raw, query).endswith(
        "valid tags are weights, kv_cache, cuda_graph, weights_drafter")


@pytest.mark.parametrize("query", [
    "role=decode&role=prefill", "timeout=1&timeout=2", "level=1&level=2", "mode=wait&mode=wait"])
def test_a_query_key_given_twice_is_refused_naming_it(query: str) -> None:
    key = query.split("=")[0]
    assert refusal(Operation.RELEASE, b"", query) == f"query key {key!r} is given more than once"


def test_tags_may_be_repeated_in_the_query() -> None:
    assert make(Operation.RESUME, b"", "tags=weights&tags=kv_cache").tags == [
        "weights", "kv_cache"]


@pytest.mark.parametrize("raw", [b" ", b"\n", b" \r\n\t"])
def test_a_body_of_only_whitespace_is_not_json_only_zero_bytes_is_no_body(raw: bytes) -> None:
    assert refusal(Operation.RELEASE, raw).startswith("request body is not valid JSON")


@pytest.mark.parametrize("raw", [b'{"drain_timeout_s": -1}', b'{"drain_timeout_s": "soon"}',
                                 b'{"drain_timeout_s": true}'])
def test_a_bad_drain_timeout_is_refused(raw: bytes) -> None:
    assert refusal(Operation.RELEASE, raw).startswith("drain_timeout_s must be null or seconds")


def test_on_vllms_routes_cuda_graph_and_weights_drafter_follow_kv_cache() -> None:
    woken = make(Operation.RESUME, b"", "tags=kv_cache", dialect=EngineName.VLLM)
    assert woken.tags == ["kv_cache", "cuda_graph", "weights_drafter"]
    assert json.loads(woken.body) == {"tags": ["kv_cache", "cuda_graph", "weights_drafter"]}
    slept = make(Operation.RELEASE, b'{"tags": ["weights", "kv_cache"], "x": 1}',
                 dialect=EngineName.VLLM)
    assert json.loads(slept.body) == {
        "tags": ["weights", "kv_cache", "cuda_graph", "weights_drafter"], "x": 1}
    assert make(Operation.RESUME, b"", "tags=weights", dialect=EngineName.VLLM).tags == [
        "weights"]
    assert make(Operation.RESUME, b"", dialect=EngineName.VLLM).tags is None


def test_on_sglangs_routes_exactly_the_tags_asked_are_sent() -> None:
    raw = b'{"tags": ["kv_cache"]}'
    request = make(Operation.RESUME, raw)
    assert (request.tags, request.body) == (["kv_cache"], raw)
