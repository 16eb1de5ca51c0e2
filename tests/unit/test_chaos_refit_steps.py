"""Chaos steps for a refit: what each sends, and the scenario file's checks of them."""

from __future__ import annotations

import pytest

from pdfleet.chaos.scenario import ScenarioError, parse_scenarios


def steps(*given: dict[str, object]) -> list[object]:
    chaos = parse_scenarios({"scenarios": [{"name": "s", "steps": list(given)}]}, "t")
    return chaos.scenarios[0].steps


def test_pause_update_and_continue_steps_say_what_they_send() -> None:
    pause, update, go_on = steps({"pause": {"mode": "in_place"}},
                                 {"update": {"seed": 7, "version": "v2",
                                             "query": {"force": "true"}}},
                                 {"continue": {}})
    assert [s.operation for s in (pause, update, go_on)] == ["pause", "update", "continue"]
    assert pause.call("pause").payload() == {"mode": "in_place"}
    assert update.call("update").payload() == {"weight_version": "v2"}
    assert update.describe() == "update seed=7 version=v2 ?force=true"
    assert go_on.call("continue").payload() == {}


@pytest.mark.parametrize(("update", "named"), [
    ({"seed": 7, "bad_file": True}, "exactly one of seed, model_path, bad_file"),
    ({"version": "v2"}, "exactly one of seed, model_path, bad_file"),
    ({"seed": 7, "versoin": "v2"}, "unknown key 'scenarios.0.steps.0.update.versoin'"),
])
def test_an_update_names_exactly_one_checkpoint(update: dict[str, object], named: str) -> None:
    with pytest.raises(ScenarioError, match=named):
        steps({"update": update})


def test_traffic_refits_or_sleeps_but_not_both() -> None:
    with pytest.raises(ScenarioError, match="sleep_wake_cycles or refit_cycles, not both"):
        steps({"traffic": {"requests": 4, "sleep_wake_cycles": 1, "refit_cycles": 1}})


def test_a_version_expectation_names_a_known_node() -> None:
    with pytest.raises(ScenarioError, match=r"expect.stale.ghost: no node named 'ghost'"):
        steps({"update": {"seed": 7}, "expect": {"stale": ["ghost"]}})
