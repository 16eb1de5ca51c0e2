"""The control report: the 200 and 502 bodies, the outcome, the rollback section and the
operations log's entry, all built from node outcomes."""

from __future__ import annotations

from pdfleet.vocabulary import Operation, Role
from router.control.outcome import Answered, NodeOutcome, NoOp, TransportFailed, Unsupported
from router.control.report import ControlFailed, ControlReport, NodeResult
from router.operations import OperationEntry

OK = Answered(status=200, elapsed_ms=2.0, result={"freed_bytes": 1})
REFUSED = TransportFailed(error="ConnectionRefused: no", kind="refused", elapsed_ms=0.5)
HTTP_500 = Answered(status=500, elapsed_ms=3.0, detail="node error")


def row(name: str, outcome: NodeOutcome, started_ms: float = 0.0) -> NodeResult:
    return NodeResult.of(f"http://{name}", Role.MIXED, outcome,
                         started_ms=started_ms, ended_ms=started_ms + 1)


def report(*rows: NodeResult, rollback: list[NodeResult] | None = None) -> ControlReport:
    return ControlReport.of(operation=Operation.RELEASE, request_id="r1", results=list(rows),
                            elapsed_ms=4.0, rollback=rollback, tags=["kv_cache"],
                            started_at=100.0)


def test_every_node_succeeding_is_the_200_body_with_a_count() -> None:
    done = report(row("a", OK), row("b", NoOp({"noop_tags": ["x"]})))
    assert done.success and done.outcome == "success"
    assert done.body() == {
        "success": True, "operation": "release_memory_occupation", "request_id": "r1",
        "total": 2, "succeeded": 2, "failed": 0, "elapsed_ms": 4.0,
        "nodes": [
            {"server": "http://a", "role": "mixed", "status": 200, "elapsed_ms": 2.0,
             "result": {"freed_bytes": 1}},
            {"server": "http://b", "role": "mixed", "status": None, "elapsed_ms": 0.0,
             "result": {"noop_tags": ["x"]}},
        ]}


def test_a_failed_node_makes_the_502_detail_naming_who_succeeded_and_why_others_failed() -> None:
    failed = report(row("a", OK), row("b", REFUSED), row("c", HTTP_500))
    assert not failed.success and failed.outcome == "partial"
    assert failed.body() == {
        "message": "release_memory_occupation failed on 2/3 nodes",
        "operation": "release_memory_occupation", "request_id": "r1", "total": 3, "failed": 2,
        "succeeded": ["http://a"], "elapsed_ms": 4.0,
        "failures": [
            {"server": "http://b", "role": "mixed", "error": "ConnectionRefused: no",
             "kind": "refused", "elapsed_ms": 0.5},
            {"server": "http://c", "role": "mixed", "status": 500, "detail": "node error",
             "kind": "http", "elapsed_ms": 3.0},
        ],
        "nodes": [{"server": "http://a", "role": "mixed", "status": 200, "elapsed_ms": 2.0,
                   "result": {"freed_bytes": 1}}]}


def test_every_node_failing_is_the_failure_outcome() -> None:
    assert report(row("a", REFUSED), row("b", Unsupported("no"))).outcome == "failure"


def test_an_unsupported_operation_is_a_failure_of_kind_other_without_a_call() -> None:
    (failure,) = report(row("a", Unsupported("cannot release only weights"))).failures
    assert (failure.error, failure.kind, failure.elapsed_ms, failure.status) == (
        "cannot release only weights", "other", 0.0, None)


def test_the_rollback_section_shows_each_resumed_node_as_success_or_failure() -> None:
    failed = report(row("a", OK), row("b", REFUSED),
                    rollback=[row("a", Answered(status=200, elapsed_ms=1.0))])
    assert failed.body()["rollback"] == [
        {"server": "http://a", "role": "mixed", "status": 200, "elapsed_ms": 1.0,
         "result": None}]
    assert "rollback" not in report(row("a", OK), row("b", REFUSED)).body()


def test_the_reply_validates_back_into_the_same_report() -> None:
    failed = report(row("a", OK), row("b", REFUSED), rollback=[row("a", REFUSED)])
    again = ControlReport.from_reply(502, {"detail": failed.body()})
    assert again is not None and again.body() == failed.body()
    assert [r.server for r in again.failures] == ["http://b"]
    done = report(row("a", OK))
    assert ControlReport.from_reply(200, done.body()) == ControlReport.model_validate(
        done.body())


def test_any_other_reply_is_no_report() -> None:
    assert ControlReport.from_reply(409, {"detail": "another control operation"}) is None
    assert ControlReport.from_reply(502, {"detail": "bad gateway"}) is None
    assert ControlReport.from_reply(200, "not json") is None


def test_the_502_envelope_is_published_around_the_same_report() -> None:
    assert ControlFailed.model_json_schema()["properties"]["detail"]["$ref"].endswith(
        "/ControlReport")


def test_the_operations_entry_has_each_nodes_offsets_outcome_and_error() -> None:
    failed = report(row("a", OK, started_ms=1.0), row("b", HTTP_500, started_ms=2.0),
                    rollback=[row("a", REFUSED, started_ms=5.0)])
    entry = OperationEntry.of(failed).model_dump(mode="json")
    assert {k: entry[k] for k in ("operation", "request_id", "tags", "started_at",
                                  "elapsed_ms", "outcome", "total", "failed")} == {
        "operation": "release_memory_occupation", "request_id": "r1", "tags": ["kv_cache"],
        "started_at": 100.0, "elapsed_ms": 4.0, "outcome": "partial", "total": 2,
        "failed": 1}
    nodes = {n["server"]: n for n in entry["nodes"]}
    assert nodes["http://a"] == {
        "server": "http://a", "role": "mixed", "outcome": "success", "started_ms": 1.0,
        "ended_ms": 2.0, "status": 200, "error": None, "kind": None}
    assert nodes["http://b"]["error"] == "node error" and nodes["http://b"]["kind"] == "http"
    assert entry["rollback"][0]["outcome"] == "failure"
    assert entry["rollback"][0]["error"] == "ConnectionRefused: no"
