"""The fleet's weight version, which nodes are stale, placement by version, and the version a
generation reply names: the rules alone, on a registry built in-process."""

from __future__ import annotations

from collections import Counter

import pytest

from pdfleet.vocabulary import Operation, Role
from router.config import NodeSpec, Policy, VersionPolicy
from router.control.outcome import Answered, NodeOutcome, NoOp, TransportFailed
from router.control.report import ControlReport, NodeResult
from router.pd.placement import NoRoute, Placer, VersionsApart
from router.pd.stream import served_version
from router.registry import FleetRegistry, Health, Node, most_reported, version_named

PORTS = iter(range(30001, 31000))


def fleet(*nodes: tuple[Role, str | None]) -> tuple[FleetRegistry, list[Node]]:
    """A registry of nodes of these roles, each at its version (None: not known yet)."""
    registry = FleetRegistry()
    added = []
    for role, version in nodes:
        node = registry.add(NodeSpec(url=f"http://127.0.0.1:{next(PORTS)}", role=role))
        if version is not None:
            registry.set_weight_version(node, version)
        added.append(node)
    return registry, added


def update_report(version: str | None, outcomes: list[NodeOutcome],
                  operation: Operation = Operation.UPDATE_FROM_DISK) -> ControlReport:
    """The report of `operation` naming `version`, with one row per outcome."""
    results = [NodeResult.of(f"http://127.0.0.1:{30001 + i}", Role.MIXED, outcome,
                             started_ms=0.0, ended_ms=1.0)
               for i, outcome in enumerate(outcomes)]
    report = ControlReport.of(operation=operation, request_id="r", results=results,
                              elapsed_ms=1.0)
    return report.model_copy(update={"weight_version": version})


OK = Answered(status=200, elapsed_ms=1.0)
FAILED = Answered(status=500, elapsed_ms=1.0, detail="boom")
REFUSED = TransportFailed(error="refused", kind="refused", elapsed_ms=0.1)


def test_the_version_most_nodes_report_is_the_fleets() -> None:
    assert most_reported(["v1", "v2", "v1"]) == "v1"
    assert most_reported([]) is None


def test_a_tie_goes_to_the_version_last_in_natural_order() -> None:
    assert most_reported(["step-9", "step-10"]) == "step-10"
    assert most_reported(["step-10", "step-9"]) == "step-10"
    assert most_reported(["b", "a", "a", "b"]) == "b"


@pytest.mark.parametrize(("outcomes", "named"), [
    ([OK, FAILED], "v2"),
    ([NoOp({"noop": "already at v2"}), REFUSED], "v2"),
    ([FAILED, REFUSED], None),
])
def test_an_update_that_took_on_any_node_names_the_fleets_version(
        outcomes: list[NodeOutcome], named: str | None) -> None:
    assert version_named(update_report("v2", outcomes)) == named


def test_an_update_naming_no_version_and_other_operations_leave_it() -> None:
    assert version_named(update_report(None, [OK])) is None
    assert version_named(update_report("v2", [OK], Operation.RELEASE)) is None
    assert version_named(update_report(
        "v3", [OK], Operation.UPDATE_FROM_DISTRIBUTED)) == "v3"


async def test_the_version_an_update_named_wins_over_what_most_nodes_report() -> None:
    registry, _ = fleet((Role.MIXED, "v1"), (Role.MIXED, "v1"), (Role.MIXED, "v2"))
    assert registry.weight_version == "v1"
    await registry.control_done(update_report("v2", [OK, FAILED, FAILED]))
    assert registry.weight_version == "v2" and registry.updated_version == "v2"
    await registry.control_done(update_report("v3", [FAILED, FAILED, FAILED]))
    assert registry.weight_version == "v2"


def test_the_reported_version_is_counted_again_when_nodes_change() -> None:
    registry, (_, b, c) = fleet((Role.MIXED, "v1"), (Role.MIXED, "v1"), (Role.MIXED, "v2"))
    assert registry.weight_version == "v1"
    registry.record_poll(b, b.version, reachable=True, latency_ms=1.0, released_tags=None,
                         memory=None, inflight=None, error=None, weight_version="v2",
                         weight_version_known=True)
    assert registry.weight_version == "v2"
    registry.remove(c.url)
    registry.remove(b.url)
    assert registry.weight_version == "v1"


def test_a_poll_that_began_before_an_update_keeps_the_updates_version() -> None:
    registry, (node,) = fleet((Role.MIXED, "v1"))
    before = node.version
    registry.record_control(node, Operation.UPDATE_FROM_DISK, None,
                            Answered(status=200, elapsed_ms=1.0, weight_version="v2"))
    registry.record_poll(node, before, reachable=True, latency_ms=1.0, released_tags=None,
                         memory=None, inflight=None, error=None, weight_version="v1",
                         weight_version_known=True)
    assert node.weight_version == "v2"
    registry.record_poll(node, node.version, reachable=True, latency_ms=1.0,
                         released_tags=None, memory=None, inflight=None, error=None,
                         weight_version="v3", weight_version_known=True)
    assert node.weight_version == "v3"


def test_a_poll_that_says_no_version_keeps_the_one_the_router_set() -> None:
    registry, (node,) = fleet((Role.MIXED, None))
    registry.record_control(node, Operation.UPDATE_FROM_DISK, None,
                            Answered(status=200, elapsed_ms=1.0, weight_version="v2"))
    registry.record_poll(node, node.version, reachable=True, latency_ms=1.0,
                         released_tags=[], memory=None, inflight=None, error=None)
    assert node.weight_version == "v2" and node.weight_version_known


def test_a_node_of_unknown_version_is_stale_only_once_the_fleet_has_a_version() -> None:
    registry, (unknown, named_none) = fleet((Role.MIXED, None), (Role.MIXED, None))
    registry.record_poll(named_none, named_none.version, reachable=True, latency_ms=1.0,
                         released_tags=None, memory=None, inflight=None, error=None,
                         weight_version=None, weight_version_known=True)
    assert registry.weight_version is None and registry.stale() == []
    view = unknown.status_view(stale=not registry.current(unknown))
    assert view.weight_version == "unknown" and view.stale is False
    registry.adopt_updated_version("v1")
    assert registry.stale() == [unknown, named_none]
    assert registry.summary().stale == 2
    assert named_none.status_view(stale=True).weight_version is None


def test_a_node_of_unknown_version_serves_until_an_update_names_the_fleets_version() -> None:
    """A vLLM server names no version: beside SGLang servers that report theirs, it serves
    until a weight update through the router names the fleet's version."""
    registry, (sglang, vllm) = fleet((Role.MIXED, "default"), (Role.MIXED, None))
    placer = Placer(registry, Policy.ROUND_ROBIN)
    assert registry.weight_version == "default" and registry.stale() == []
    assert {placer.place().decode.url for _ in range(4)} == {sglang.url, vllm.url}
    registry.adopt_updated_version("default")
    assert registry.stale() == [vllm]
    assert {placer.place().decode.url for _ in range(4)} == {sglang.url}


def test_a_node_added_to_a_fleet_with_a_version_is_not_served_until_known_at_it() -> None:
    registry, (known,) = fleet((Role.MIXED, "v1"))
    registry.adopt_updated_version("v1")
    placer = Placer(registry, Policy.ROUND_ROBIN)
    assert registry.all_at_version and placer.place().decode is known
    added = registry.add(NodeSpec(url="http://127.0.0.1:30999", role=Role.MIXED))
    assert not registry.all_at_version and registry.stale() == [added]
    assert {placer.place().decode.url for _ in range(4)} == {known.url}
    registry.set_weight_version(added, "v1")
    assert {placer.place().decode.url for _ in range(4)} == {known.url, added.url}


def placements(placer: Placer, count: int) -> list[tuple[str, str | None]]:
    """The (decode, prefill) URLs of `count` placements in a row."""
    return [(p.decode.url, p.prefill.url if p.prefill is not None else None)
            for p in (placer.place() for _ in range(count))]


def test_latest_serves_only_pairs_and_mixed_nodes_at_the_fleets_version() -> None:
    registry, (p1, _, d1, d2, _) = fleet(
        (Role.PREFILL, "v2"), (Role.PREFILL, "v1"),
        (Role.DECODE, "v2"), (Role.DECODE, "v2"), (Role.DECODE, "v1"))
    placer = Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.LATEST)
    chosen = placements(placer, 8)
    assert {prefill for _, prefill in chosen} == {p1.url}
    assert Counter(decode for decode, _ in chosen) == {d1.url: 4, d2.url: 4}


def test_latest_falls_back_to_a_mixed_node_at_the_version_when_no_pair_is() -> None:
    registry, (_, _, m1, _) = fleet(
        (Role.PREFILL, "v2"), (Role.DECODE, "v1"), (Role.MIXED, "v2"), (Role.MIXED, "v1"))
    placer = Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.LATEST)
    assert placements(placer, 4) == [(m1.url, None)] * 4


def test_any_serves_every_version_but_never_splits_a_pair() -> None:
    registry, nodes = fleet(
        (Role.PREFILL, "v1"), (Role.PREFILL, "v2"),
        (Role.DECODE, "v1"), (Role.DECODE, "v2"), (Role.DECODE, "v3"))
    version = {n.url: n.weight_version for n in nodes}
    placer = Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.ANY)
    chosen = placements(placer, 12)
    assert all(prefill is not None and version[prefill] == version[decode]
               for decode, prefill in chosen)
    assert {decode for decode, _ in chosen} == {n.url for n in nodes[2:4]}  # v3: no prefill


def test_nodes_of_unknown_version_pair_only_with_each_other_once_the_fleet_has_one() -> None:
    registry, (_, p_unknown, d_unknown) = fleet(
        (Role.PREFILL, "v1"), (Role.PREFILL, None), (Role.DECODE, None))
    registry.adopt_updated_version("v1")
    placer = Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.ANY)
    assert placements(placer, 3) == [(d_unknown.url, p_unknown.url)] * 3
    # While the fleet has no version, a node not known yet counts as at it: all pair.
    registry, (p1, p2, _) = fleet((Role.PREFILL, None), (Role.PREFILL, None), (Role.DECODE, None))
    chosen = placements(Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.LATEST), 4)
    assert {prefill for _, prefill in chosen} == {p1.url, p2.url}


def test_no_node_at_the_fleets_version_names_the_stale_nodes_and_their_versions() -> None:
    registry, (p1, p2, d1) = fleet(
        (Role.PREFILL, "v2"), (Role.PREFILL, "v2"), (Role.DECODE, "v1"))
    with pytest.raises(VersionsApart) as latest:
        Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.LATEST).place()
    message = str(latest.value)
    assert "'v2'" in message and f"{d1.url} ('v1')" in message
    assert p1.url not in message and p2.url not in message
    with pytest.raises(VersionsApart) as split:
        Placer(registry, Policy.ROUND_ROBIN, VersionPolicy.ANY).place()
    assert f"{p1.url} ('v2')" in str(split.value) and f"{d1.url} ('v1')" in str(split.value)


def test_a_sleeping_or_down_fleet_is_still_said_so_whatever_the_versions() -> None:
    registry, (p1, d1) = fleet((Role.PREFILL, "v2"), (Role.DECODE, "v1"))
    d1.released_tags = frozenset({"weights"})
    with pytest.raises(NoRoute, match="cluster is sleeping"):
        Placer(registry, Policy.ROUND_ROBIN).place()
    d1.released_tags, p1.health = frozenset(), Health.DOWN
    with pytest.raises(NoRoute, match="no healthy prefill/decode pair"):
        Placer(registry, Policy.ROUND_ROBIN).place()


def test_a_reply_names_the_nodes_own_header_else_the_registrys_version() -> None:
    registry, (node,) = fleet((Role.MIXED, None))
    assert served_version(None, node) is None
    registry.set_weight_version(node, None)
    assert served_version(None, node) is None
    registry.set_weight_version(node, "v2")
    assert served_version(b"v3", node) == b"v3"
    assert served_version(None, node) == b"v2"
    registry.set_weight_version(node, "v2\r\nX-Injected: 1 é")
    assert served_version(None, node) == b"v2%0D%0AX-Injected: 1 %C3%A9"
