"""Fault rules: each kind from its text and its JSON form, the defaults, the errors that name
the key, and the rule set that fires them."""

from __future__ import annotations

from typing import Any

import pytest

from node.faults.rules import (
    REQUEST_KINDS,
    RESUME_KINDS,
    CrashFault,
    DelayFault,
    FaultRuleError,
    FaultSet,
    HangFault,
    OomOnResumeFault,
    ResetAt,
    ResetFault,
    SlowBodyFault,
    StatusBody,
    StatusFault,
    parse_rule,
    rule_from_mapping,
)

EVERY_KIND = [
    ("route=/flush_cache,kind=delay,seconds=0.5,times=2",
     {"route": "/flush_cache", "kind": "delay", "seconds": 0.5, "times": 2},
     DelayFault(kind="delay", route="/flush_cache", seconds=0.5, times=2)),
    ("kind=hang,p=0.25", {"kind": "hang", "p": 0.25}, HangFault(kind="hang", p=0.25)),
    ("kind=status,code=503,body=binary,bytes=10",
     {"kind": "status", "code": 503, "body": "binary", "bytes": 10},
     StatusFault(kind="status", code=503, body=StatusBody.BINARY, bytes=10)),
    ("kind=reset,at=body", {"kind": "reset", "at": "body"},
     ResetFault(kind="reset", at=ResetAt.BODY)),
    ("kind=slow_body,rate=1024", {"kind": "slow_body", "rate": 1024},
     SlowBodyFault(kind="slow_body", rate=1024.0)),
    ("kind=crash,code=3", {"kind": "crash", "code": 3}, CrashFault(kind="crash", code=3)),
    ("kind=oom_on_resume,times=1", {"kind": "oom_on_resume", "times": 1},
     OomOnResumeFault(kind="oom_on_resume", times=1)),
]


@pytest.mark.parametrize(("text", "values", "rule"), EVERY_KIND)
def test_text_and_json_forms_give_the_same_rule(text: str, values: dict[str, Any], rule: Any):
    assert parse_rule(text) == rule
    assert rule_from_mapping(values) == rule


def test_json_numbers_may_come_as_strings():
    as_text = parse_rule("kind=status,code=500")
    assert rule_from_mapping({"kind": "status", "code": "500"}) == as_text


def test_spaces_and_empty_items_in_the_text_form_are_ignored():
    assert parse_rule(" kind = delay , seconds = 1 ,") == parse_rule("kind=delay,seconds=1")


def test_common_keys_default_to_every_route_always_unlimited():
    rule = parse_rule("kind=hang")
    assert (rule.route, rule.p, rule.times) == ("*", 1.0, None)


@pytest.mark.parametrize(("text", "default"), [
    ("kind=reset", ("at", ResetAt.HEADERS)),
    ("kind=crash", ("code", 1)),
    ("kind=status,code=500", ("body", StatusBody.TEXT)),
    ("kind=status,code=500,body=binary", ("bytes", 4096)),
    ("kind=status,code=500,body=huge", ("bytes", 64 << 20)),
])
def test_a_kind_fills_its_optional_keys(text: str, default: tuple[str, Any]):
    key, value = default
    assert getattr(parse_rule(text), key) == value


def test_spec_lists_the_keys_a_rule_has_and_leaves_out_bytes_of_a_text_body():
    assert parse_rule("route=/x,kind=status,code=500,bytes=9,times=2").spec() == {
        "route": "/x", "kind": "status", "p": 1.0, "times": 2, "code": 500, "body": "text"}
    assert parse_rule("kind=status,code=500,body=huge").spec() == {
        "route": "*", "kind": "status", "p": 1.0, "code": 500, "body": "huge",
        "bytes": 64 << 20}


@pytest.mark.parametrize(("text", "key"), [
    ("kind=delay,sekonds=1", "sekonds"),  # named before the missing seconds
    ("kind=hang,code=500", "code"),
    ("kind=explode", "kind"),
    ("route=/x", "kind"),
    ("kind=status,code=abc", "code"),
    ("kind=status,code=600", "code"),
    ("kind=crash,code=256", "code"),
    ("kind=hang,p=1.5", "p"),
    ("kind=hang,times=0", "times"),
    ("kind=delay", "seconds"),
    ("kind=delay,seconds=-1", "seconds"),
    ("kind=status", "code"),
    ("kind=status,code=500,body=xml", "body"),
    ("kind=reset,at=trailers", "at"),
    ("kind=slow_body,rate=0.5", "rate"),
    ("route=flush_cache,kind=hang", "route"),
    ("kind=hang,kind=delay", "kind"),
    ("kind=hang,times", "times"),
])
def test_a_malformed_rule_is_refused_naming_the_key(text: str, key: str):
    with pytest.raises(FaultRuleError) as raised:
        parse_rule(text)
    assert raised.value.key == key
    assert str(raised.value).startswith(f"fault rule key '{key}': ")


@pytest.mark.parametrize("value", [True, None, [1], {"a": 1}])
def test_a_json_value_must_be_a_string_or_a_number(value: Any):
    with pytest.raises(FaultRuleError) as raised:
        rule_from_mapping({"kind": "hang", "times": value})
    assert raised.value.key == "times"


def test_a_rule_with_times_drops_out_after_firing_that_often():
    faults = FaultSet([parse_rule("kind=hang,times=2")])
    assert faults.take("/a", REQUEST_KINDS) is not None
    assert faults.views()[0] | {"id": 0} == {
        "id": 0, "route": "*", "kind": "hang", "p": 1.0, "times": 2, "fired": 1, "remaining": 1}
    assert faults.take("/a", REQUEST_KINDS) is not None
    assert faults.take("/a", REQUEST_KINDS) is None and faults.views() == []


def test_the_first_matching_rule_fires_and_others_keep_their_count():
    faults = FaultSet([parse_rule("route=/a,kind=hang"), parse_rule("kind=oom_on_resume"),
                       parse_rule("kind=crash")])
    assert isinstance(faults.take("/b", REQUEST_KINDS), CrashFault)
    assert isinstance(faults.take("/a", REQUEST_KINDS), HangFault)
    assert isinstance(faults.take(None, RESUME_KINDS), OomOnResumeFault)
    assert [view["fired"] for view in faults.views()] == [1, 1, 1]


def test_p_zero_never_fires_and_p_one_always_does():
    faults = FaultSet([parse_rule("kind=hang,p=0"), parse_rule("kind=crash,p=1")], seed=7)
    fired = {type(faults.take("/a", REQUEST_KINDS)) for _ in range(50)}
    assert fired == {CrashFault}


def test_clear_removes_every_rule_and_wakes_hung_calls():
    faults = FaultSet([parse_rule("kind=hang"), parse_rule("kind=crash")])
    hung = faults.cleared
    assert faults.clear() == 2
    assert hung.is_set() and not faults.cleared.is_set() and faults.views() == []
