"""`pdfleet router --workers N`: N router processes serving one port.

The command's own process is the supervisor. It checks the port and the bind rule once,
makes the router's run directory (private channels, locks, the fleet config as the workers
read it, and a fresh `PROMETHEUS_MULTIPROC_DIR` for metrics across processes), starts the
workers and watches them. SIGINT or SIGTERM stops them all; so does the death of any one of
them (a fleet view that one worker lacks would be wrong, and restarting it alone could not
recover the nodes added since start); the workers die with the supervisor even if it is
killed outright. The run directory is removed on exit.

Each worker (`python -m router.workers RUN_DIR INDEX COUNT`) binds its own socket to the port
with SO_REUSEPORT, so the kernel spreads connections across them, and is a full router:
registry, poller, control, proxy. router/peers.py keeps their fleets the same.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from router.app import serve
from router.config import FleetConfig, load_config
from router.peers import WorkerPlace
from router.security import admin_token_from_env, check_bind

STOP_GRACE_S = 10.0
WATCH_INTERVAL_S = 0.2
CONFIG_FILE = "config.json"
METRICS_DIR = "metrics"
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Runs in a child before exec: on Linux the kernel sends it SIGTERM when its parent
    dies, even by SIGKILL, so no child outlives the process that started it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def port_taken(host: str, port: int) -> OSError | None:
    """Why `host:port` cannot be ours, or None. Bound without SO_REUSEPORT, so a port that
    another process's workers share is taken too, not silently joined."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def shared_port_socket(host: str, port: int) -> socket.socket:
    """This worker's share of the port: bound, not listening. The server listens once the
    worker is ready, and only then does the kernel hand it connections."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


class Supervisor:
    def __init__(self, config: FleetConfig, count: int, insecure_no_auth: bool) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="pdfleet-router-"))  # mode 0700
        metrics = self.run_dir / METRICS_DIR
        metrics.mkdir()
        (self.run_dir / CONFIG_FILE).write_text(config.model_dump_json())
        self._env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        self._args = [[sys.executable, "-m", "router.workers", str(self.run_dir), str(i),
                       str(count), *(["--insecure-no-auth"] if insecure_no_auth else [])]
                      for i in range(count)]
        self.workers: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def start(self) -> None:
        for args in self._args:
            self.workers.append(subprocess.Popen(
                args, stdin=subprocess.DEVNULL, env=self._env,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them
                preexec_fn=die_with_parent,
            ))

    def watch(self) -> int | None:
        """Wait until a stop is requested (None) or a worker exits (its index)."""
        while not self._stop.wait(WATCH_INTERVAL_S):
            for index, worker in enumerate(self.workers):
                if worker.poll() is not None:
                    return index
        return None

    def stop(self) -> None:
        """SIGTERM every worker, SIGKILL what is left after `STOP_GRACE_S`, remove the run
        directory."""
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in self.workers:
            try:
                worker.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        shutil.rmtree(self.run_dir, ignore_errors=True)


def run_workers(config: FleetConfig, admin_token: str | None, insecure_no_auth: bool,
                count: int, say: Callable[[str], None]) -> int:
    """Serve with `count` workers until SIGINT/SIGTERM (0) or until a worker dies (1)."""
    settings = config.router
    check_bind(settings.host, admin_token, insecure_no_auth)
    taken = port_taken(settings.host, settings.port)
    if taken is not None:
        say(f"cannot serve on {settings.host}:{settings.port}: {taken.strerror}")
        return 1
    supervisor = Supervisor(config, count, insecure_no_auth)
    previous = {s: signal.signal(s, supervisor.request_stop)
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        say(f"router: {count} workers on http://{settings.host}:{settings.port}")
        died = supervisor.watch()
        if died is not None:
            code = supervisor.workers[died].returncode
            say(f"worker {died} exited with code {code}; stopping the others")
            return 1
        return 0
    finally:
        supervisor.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> None:
    """One worker: `python -m router.workers RUN_DIR INDEX COUNT [--insecure-no-auth]`."""
    parser = argparse.ArgumentParser(description="one worker of `pdfleet router --workers`")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("index", type=int)
    parser.add_argument("count", type=int)
    parser.add_argument("--insecure-no-auth", action="store_true")
    args = parser.parse_args()
    config = load_config(args.run_dir / CONFIG_FILE)  # JSON is YAML
    place = WorkerPlace(args.run_dir, args.index, args.count)
    sock = shared_port_socket(config.router.host, config.router.port)
    serve(config, admin_token_from_env(), args.insecure_no_auth, place=place, sock=sock)


if __name__ == "__main__":
    main()
