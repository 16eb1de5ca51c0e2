"""The supervisor of `pdfleet up` and `pdfleet router --workers`: it names the child that
exited, and its stop leaves no process of any child's group behind, even one that ignores
SIGTERM."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from pdfleet.supervisor import ChildProcess, Supervisor


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def wait_until(check: Callable[[], bool], within_s: float = 10) -> None:
    """Poll `check` until it holds: a bounded wait for another process to act."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "not within the bound"
        time.sleep(0.02)


def test_watch_names_the_child_that_exited_and_its_log_tail(tmp_path: Path):
    supervisor = Supervisor()
    lasting = ChildProcess("lasting", python("import time; time.sleep(300)"))
    failing = ChildProcess("failing", python("print('why it failed'); raise SystemExit(3)"),
                           log_path=tmp_path / "failing.log")
    supervisor.start([lasting, failing])
    try:
        assert supervisor.watch() is failing
        assert failing.exit_code() == 3 and lasting.exit_code() is None
        assert failing.log_tail() == "why it failed"
    finally:
        supervisor.stop()
    assert lasting.exit_code() is not None


def test_stop_kills_what_ignores_sigterm_grandchildren_included():
    stubborn = ("import signal, subprocess, sys, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "  # inherited by the grandchild
                "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
                "time.sleep(300)")
    supervisor = Supervisor()
    child = ChildProcess("stubborn", python(stubborn))
    supervisor.start([child])
    assert child.proc is not None
    parent = psutil.Process(child.proc.pid)
    wait_until(lambda: len(parent.children()) == 1)
    (grandchild,) = parent.children()
    started = time.monotonic()
    supervisor.stop(grace_s=0.5)
    assert time.monotonic() - started < 5
    assert child.exit_code() is not None
    _, alive = psutil.wait_procs([grandchild], timeout=5)
    assert alive == []
