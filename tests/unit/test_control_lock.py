"""One control operation at a time, with the one lock interface for one process and for
the router's worker processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.control.lock import (
    ControlLock,
    LocalControlLock,
    OperationInProgress,
    RunningOperation,
    WorkerControlLock,
)


def workers(tmp_path: Path, count: int) -> list[WorkerControlLock]:
    return [WorkerControlLock(tmp_path / "control.lock", tmp_path / "control.json", i)
            for i in range(count)]


def test_a_second_operation_is_refused_naming_the_running_one() -> None:
    lock = LocalControlLock()
    with lock.hold("flush_cache", "r1"):
        with pytest.raises(OperationInProgress) as refused, lock.hold("flush_cache", "r2"):
            pass
        assert lock.running() == RunningOperation(operation="flush_cache", request_id="r1")
    assert str(refused.value) == "another control operation is running: flush_cache (r1)"
    assert lock.running() is None


def test_a_worker_is_refused_while_another_worker_holds_the_lock(tmp_path: Path) -> None:
    first, second = workers(tmp_path, 2)
    with first.hold("release_memory_occupation", "r1"):
        assert second.running() == RunningOperation(operation="release_memory_occupation",
                                                    request_id="r1")
        with pytest.raises(OperationInProgress, match=r"release_memory_occupation \(r1\)"), \
                second.hold("flush_cache", "r2"):
            pass
    assert second.running() is None
    with second.hold("flush_cache", "r2"):
        pass


@pytest.mark.parametrize("kind", ["local", "workers"])
def test_each_operation_gets_the_next_sequence_number(tmp_path: Path, kind: str) -> None:
    locks: list[ControlLock] = [LocalControlLock()] if kind == "local" else workers(tmp_path, 2)
    sequences = []
    for index in range(4):
        lock = locks[index % len(locks)]
        with lock.hold("flush_cache", f"r{index}") as sequence:
            sequences.append(sequence)
        assert lock.last_sequence == sequence
    assert sequences == [1, 2, 3, 4]


def test_the_lock_is_released_when_the_operation_raises() -> None:
    lock = LocalControlLock()
    with pytest.raises(RuntimeError), lock.hold("flush_cache", "r1"):
        raise RuntimeError
    assert lock.running() is None
