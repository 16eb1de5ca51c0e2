"""Child processes started, watched and stopped as one: the local fleet of `pdfleet up` and
the router workers of `pdfleet router --workers N`.

Each child runs in a session of its own, so Ctrl-C in a terminal reaches only the
supervisor, which then stops the children itself; and each dies with the supervisor even if
that is killed outright. Stopping sends SIGTERM to every child's process group, the last
started first, waits a bounded grace, then SIGKILLs what is left of each group,
grandchildren included: no process outlives the supervisor that started it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import FrameType

STOP_GRACE_S = 10.0
WATCH_INTERVAL_S = 0.2
LOG_TAIL_LINES = 20
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in a child before exec: on Linux the kernel sends it SIGTERM when its parent
    dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class ChildProcess:
    """One supervised command. Its output goes to `log_path` (rewritten at each start), or
    to the supervisor's own stdout and stderr when there is none; `start` again restarts it
    once it has exited."""

    def __init__(self, name: str, args: list[str], log_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with ExitStack() as files:
            log = None if self.log_path is None else files.enter_context(
                self.log_path.open("wb"))
            self.proc = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=log,
                stderr=None if log is None else subprocess.STDOUT, env=self.env,
                start_new_session=True,  # its own process group, stopped as a whole
                preexec_fn=die_with_parent,
            )

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout_s: float | None) -> None:
        """Until it has exited, or `timeout_s` has passed."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pass

    def log_tail(self) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def signal_group(self, signum: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass


class Supervisor:
    """The children started through it, and the stop that SIGINT or SIGTERM requests while
    `stop_on_signals` is in force."""

    def __init__(self) -> None:
        self.children: list[ChildProcess] = []
        self._stop = threading.Event()

    def start(self, children: Sequence[ChildProcess]) -> None:
        for child in children:
            child.start()
            self.children.append(child)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    @contextmanager
    def stop_on_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM request a stop instead of ending this process, until exit."""
        previous = {s: signal.signal(s, self.request_stop)
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop_requested(self, within_s: float) -> bool:
        """Whether a stop is requested within `within_s` seconds (waiting that long if not)."""
        return self._stop.wait(within_s)

    def watch(self) -> ChildProcess | None:
        """Wait until a stop is requested (None) or a child exits (that child)."""
        while not self.stop_requested(WATCH_INTERVAL_S):
            for child in self.children:
                if child.exit_code() is not None:
                    return child
        return None

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every child's process group, the last started first; SIGKILL what is left
        after `grace_s`."""
        children = list(reversed(self.children))
        for child in children:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in children:
            child.wait(max(0.0, deadline - time.monotonic()))
        for child in children:
            child.signal_group(signal.SIGKILL)  # stragglers, grandchildren included
            child.wait(None)
