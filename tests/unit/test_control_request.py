"""The control body and query: validated by the body models, merged for vLLM's routes."""

from __future__ import annotations

import json

import pytest
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import Operation, Role
from router.control.request import BadControlRequest, ControlRequest, ReleaseBody, control_request


def make(operation: Operation, body: bytes = b"", query: str = "") -> ControlRequest:
    return control_request(operation, body, QueryParams(query),
                           content_type="text/plain", authorization=None,
                           default_timeout_s=30.0)


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
