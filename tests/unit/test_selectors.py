"""Label selectors in Kubernetes' string form: parsed into lightkube's requirements (the
string lightkube sends is what Kubernetes reads), matched as Kubernetes matches them."""

from __future__ import annotations

import re

import pytest
from lightkube.core.selector import build_selector

from router.discovery.selectors import Match, Requirement, SelectorError, parse_selector


@pytest.mark.parametrize(("text", "requirements"), [
    ("app=sglang", [Requirement("app", Match.EQUAL, ("sglang",))]),
    ("app==sglang", [Requirement("app", Match.EQUAL, ("sglang",))]),
    ("app!=sglang", [Requirement("app", Match.NOT_EQUAL, ("sglang",))]),
    ("role in (prefill, mixed)", [Requirement("role", Match.IN, ("prefill", "mixed"))]),
    ("role notin (decode)", [Requirement("role", Match.NOT_IN, ("decode",))]),
    ("gpu", [Requirement("gpu", Match.EXISTS)]),
    ("!canary", [Requirement("canary", Match.NOT_EXISTS)]),
    ("pdfleet.io/role=prefill", [Requirement("pdfleet.io/role", Match.EQUAL, ("prefill",))]),
    ("tier=", [Requirement("tier", Match.EQUAL, ("",))]),
    (" app = sglang , !canary ", [Requirement("app", Match.EQUAL, ("sglang",)),
                                  Requirement("canary", Match.NOT_EXISTS)]),
])
def test_each_form_parses(text, requirements):
    assert list(parse_selector(text).requirements) == requirements


def test_a_key_may_carry_several_requirements():
    selector = parse_selector("tier!=a,tier!=b,app in (x,y),app")
    assert [r.key for r in selector.requirements] == ["tier", "tier", "app", "app"]
    assert selector.matches({"tier": "c", "app": "x"})
    assert not selector.matches({"tier": "b", "app": "x"})


def test_lightkube_sends_the_selector_kubernetes_reads():
    selector = parse_selector("app=sglang,role in (prefill,mixed),role notin (decode),gpu,!canary")
    assert build_selector(selector.labels()) == (
        "app=sglang,role in (mixed,prefill),role notin (decode),gpu,!canary")


@pytest.mark.parametrize(("text", "labels", "expected"), [
    ("app=sglang", {"app": "sglang"}, True),
    ("app=sglang", {}, False),
    ("app!=sglang", {}, True),  # != matches objects without the key
    ("app!=sglang", {"app": "sglang"}, False),
    ("role in (a,b)", {"role": "b"}, True),
    ("role in (a,b)", {}, False),
    ("role notin (a)", {}, True),
    ("role notin (a)", {"role": "a"}, False),
    ("gpu", {"gpu": ""}, True),
    ("!canary", {"canary": "yes"}, False),
])
def test_matching_follows_kubernetes(text, labels, expected):
    assert parse_selector(text).matches(labels) is expected


@pytest.mark.parametrize(("text", "says"), [
    ("", "at least one"),
    ("app=sglang,", "empty requirement"),
    ("role in (a,b", "unbalanced '('"),
    ("role in a,b)", "unbalanced ')'"),
    ("role in ()", "at least one value"),
    ("app=has space", "not a label"),
    ("-bad=x", "not a label key"),
    ("app=" + "x" * 64, "not a label value"),
    ("app=a=b", "not a label value"),
])
def test_bad_selectors_are_refused_naming_the_part(text, says):
    with pytest.raises(SelectorError, match=re.escape(says)):
        parse_selector(text)
