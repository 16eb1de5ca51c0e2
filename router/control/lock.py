"""One control operation at a time: interleaved sleeps and wakes leave a fleet in a state
nobody asked for. A second operation is refused at once (409), never queued.

A router of one process holds the lock in memory (`LocalControlLock`); the worker processes
of `pdfleet router --workers N` share an flock on `control.lock` in the router's run directory
(`WorkerControlLock`), with `control.json` naming the running operation for every worker's
status view. Either way each operation gets a sequence number that orders operations across
workers, so a worker can tell a late peer message of an earlier operation.
"""

from __future__ import annotations

import fcntl
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class RunningOperation(BaseModel, frozen=True):
    operation: str
    request_id: str


class OperationInProgress(Exception):
    def __init__(self, running: RunningOperation) -> None:
        super().__init__(
            f"another control operation is running: {running.operation} ({running.request_id})")


class ControlLock(ABC):
    def __init__(self) -> None:
        self.last_sequence = 0  # the sequence number of the latest operation started here

    @abstractmethod
    def running(self) -> RunningOperation | None:
        """The operation that holds the lock now, if any."""

    @abstractmethod
    def _acquire(self, running: RunningOperation) -> int:
        """Take the lock for `running` and return its sequence number; OperationInProgress
        if another operation holds it."""

    @abstractmethod
    def _release(self) -> None: ...

    @contextmanager
    def hold(self, operation: str, request_id: str) -> Iterator[int]:
        """Hold the lock for one operation, yielding its sequence number."""
        self.last_sequence = self._acquire(
            RunningOperation(operation=operation, request_id=request_id))
        try:
            yield self.last_sequence
        finally:
            self._release()


class LocalControlLock(ControlLock):
    def __init__(self) -> None:
        super().__init__()
        self._running: RunningOperation | None = None

    def running(self) -> RunningOperation | None:
        return self._running

    def _acquire(self, running: RunningOperation) -> int:
        if self._running is not None:
            raise OperationInProgress(self._running)
        self._running = running
        return self.last_sequence + 1

    def _release(self) -> None:
        self._running = None


def try_flock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on `path`, or None if another holds it.
    Each call opens the file anew, so two requests in one process exclude each other too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


class WorkerControlLock(ControlLock):
    """The lock shared by the router's worker processes: `lock_path` is flocked while an
    operation runs and `state_path` names it, with the latest sequence number."""

    def __init__(self, lock_path: Path, state_path: Path, worker: int) -> None:
        super().__init__()
        self._lock_path = lock_path
        self._state_path = state_path
        self._worker = worker
        self._fd: int | None = None

    def running(self) -> RunningOperation | None:
        running = self._read_state().get("running")
        if not isinstance(running, dict):
            return None
        return RunningOperation(operation=str(running.get("operation")),
                                request_id=str(running.get("request_id")))

    def _acquire(self, running: RunningOperation) -> int:
        fd = try_flock(self._lock_path)
        if fd is None:
            raise OperationInProgress(
                self.running() or RunningOperation(operation="another", request_id="unknown"))
        try:
            sequence = int(self._read_state().get("sequence", 0)) + 1
            self._write_state(sequence, {"operation": running.operation,
                                         "request_id": running.request_id,
                                         "worker": self._worker})
        except BaseException:
            unlock(fd)
            raise
        self._fd = fd
        return sequence

    def _release(self) -> None:
        assert self._fd is not None
        try:
            self._write_state(self.last_sequence, None)
        finally:
            unlock(self._fd)
            self._fd = None

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads(self._state_path.read_bytes())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self, sequence: int, running: dict[str, Any] | None) -> None:
        partial = self._state_path.with_suffix(f".{self._worker}.tmp")
        partial.write_text(json.dumps({"sequence": sequence, "running": running}))
        os.replace(partial, self._state_path)  # readers never see half a file
