"""Chaos steps for a caller's mistakes: what they send, and the check that no node was called."""

from __future__ import annotations

import pytest

from pdfleet.chaos.checks import StepCheck
from pdfleet.chaos.scenario import ScenarioError, parse_scenarios

TRACE = {"the router's newest operation": "abc",
         "decode": {"released_tags": [], "memory operations": 2.0}}


def scenario(step: dict[str, object]) -> dict[str, object]:
    return {"scenarios": [{"name": "s", **step}]}


def test_a_list_query_value_repeats_the_key_and_the_body_fields_are_shown() -> None:
    chaos = parse_scenarios(scenario({"release": {
        "query": {"role": ["decode", "prefill"]}, "body": {"tagz": ["weights"]}}}), "t")
    assert chaos.scenarios[0].steps[0].describe() == (
        'release body={"tagz": ["weights"]} ?role=decode&role=prefill')


def test_no_node_called_is_refused_on_a_traffic_step() -> None:
    with pytest.raises(ScenarioError, match="no_node_called applies to the router's fan-out"):
        parse_scenarios(scenario({"traffic": {"requests": 1},
                                  "expect": {"no_node_called": True}}), "t")


def test_an_unchanged_trace_means_no_node_called() -> None:
    check = StepCheck()
    check.no_node_called(TRACE, dict(TRACE))
    assert check.mismatches == []


def test_a_changed_trace_names_what_changed() -> None:
    check = StepCheck()
    check.no_node_called(TRACE, {**TRACE, "decode": {"released_tags": ["weights"],
                                                     "memory operations": 3.0}})
    assert check.mismatches == [
        "expected no node called, but decode changed: {'released_tags': [], 'memory "
        "operations': 2.0} before, {'released_tags': ['weights'], 'memory operations': 3.0} "
        "after"]
