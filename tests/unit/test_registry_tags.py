"""What the registry records of a control operation, from each kind of node outcome."""

from __future__ import annotations

from pdfleet.vocabulary import MEMORY_TAGS, Operation, Role
from router.config import NodeSpec
from router.control.outcome import Answered, NoOp, TransportFailed, Unsupported
from router.registry import FleetRegistry, Health, Node, tags_after

URL = "http://127.0.0.1:30001"


def test_release_without_tags_releases_every_tag() -> None:
    assert tags_after(Operation.RELEASE, frozenset(), None) == frozenset(MEMORY_TAGS)


def test_release_adds_its_tags_to_those_already_released() -> None:
    assert tags_after(Operation.RELEASE, frozenset({"weights"}), ["kv_cache"]) == {
        "weights", "kv_cache"}


def test_resume_without_tags_resumes_everything() -> None:
    assert tags_after(Operation.RESUME, frozenset({"weights", "kv_cache"}), None) == set()


def test_resume_takes_only_its_tags_back() -> None:
    assert tags_after(Operation.RESUME, frozenset({"weights", "kv_cache"}), ["kv_cache"]) == {
        "weights"}


def test_flush_leaves_the_released_tags_as_they_were() -> None:
    assert tags_after(Operation.FLUSH, frozenset({"weights"}), None) == {"weights"}


def fleet() -> tuple[FleetRegistry, Node]:
    registry = FleetRegistry([NodeSpec(url=URL, role=Role.MIXED)])
    node = registry.get(URL)
    assert node is not None
    return registry, node


def test_an_answer_without_tags_records_the_tags_inferred_from_the_operation() -> None:
    registry, node = fleet()
    registry.record_control(node, Operation.RELEASE, ["kv_cache"],
                            Answered(status=200, elapsed_ms=1.0))
    assert node.released_tags == {"kv_cache"} and node.sleep_state_known
    assert node.health is Health.UP and node.last_error is None
    assert node.last_op == Operation.RELEASE


def test_the_tags_and_memory_a_node_reports_win_over_the_inferred_ones() -> None:
    registry, node = fleet()
    registry.record_control(
        node, Operation.RELEASE, None,
        Answered(status=200, elapsed_ms=1.0, released_tags=["weights"],
                 memory={"used_bytes": 5}))
    assert node.released_tags == {"weights"} and node.memory == {"used_bytes": 5}


def test_an_error_answer_records_its_status_and_detail_and_keeps_the_tags() -> None:
    registry, node = fleet()
    registry.record_control(node, Operation.RELEASE, None,
                            Answered(status=500, elapsed_ms=1.0, detail="boom"))
    assert node.last_error == "HTTP 500: boom"
    assert node.released_tags == frozenset() and not node.sleep_state_known


def test_a_refused_connection_marks_the_node_down() -> None:
    registry, node = fleet()
    registry.record_control(node, Operation.FLUSH, None,
                            TransportFailed(error="refused", kind="refused", elapsed_ms=0.1))
    assert node.health is Health.DOWN and node.last_error == "refused"


def test_a_timeout_records_the_error_but_not_down() -> None:
    registry, node = fleet()
    registry.record_control(node, Operation.FLUSH, None,
                            TransportFailed(error="slow", kind="timeout", elapsed_ms=9.0))
    assert node.health is Health.UNKNOWN and node.last_error == "slow"


def test_an_unsupported_operation_records_the_engines_reason() -> None:
    registry, node = fleet()
    registry.record_control(node, Operation.RELEASE, ["weights"], Unsupported("cannot"))
    assert node.last_error == "cannot" and node.released_tags == frozenset()


def test_a_no_op_keeps_the_tags_and_clears_the_last_error() -> None:
    registry, node = fleet()
    node.released_tags, node.last_error = frozenset({"weights"}), "old"
    registry.record_control(node, Operation.RESUME, ["cuda_graph"], NoOp())
    assert node.released_tags == {"weights"} and node.last_error is None
    assert node.sleep_state_known and node.health is Health.UP


def test_every_record_bumps_the_version_so_an_older_poll_cannot_overwrite_it() -> None:
    registry, node = fleet()
    before = node.version
    registry.record_control(node, Operation.RELEASE, None, Answered(status=200, elapsed_ms=1))
    registry.record_poll(node, before, reachable=True, latency_ms=1.0, released_tags=[],
                         memory=None, inflight=None, error=None)
    assert node.released_tags == frozenset(MEMORY_TAGS)
