"""`pdfleet router --workers N`: N router processes serving one port.

The command's own process is the supervisor. It checks the port and the bind rule once,
makes the router's run directory (private channels, locks, the fleet config as the workers
read it, and a fresh `PROMETHEUS_MULTIPROC_DIR` for metrics across processes), starts the
workers and watches them. SIGINT or SIGTERM stops them all; so does the death of any one of
them (a fleet view that one worker lacks would be wrong, and restarting it alone could not
recover the nodes added since start); the workers die with the supervisor even if it is
killed outright (pdfleet/supervisor.py). The run directory is removed on exit.

Each worker (`python -m router.workers RUN_DIR INDEX COUNT`) binds its own socket to the port
with SO_REUSEPORT, so the kernel spreads connections across them, and is a full router:
registry, poller, control, proxy. router/peers.py keeps their fleets the same.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pdfleet.ports import address_family, bind_error
from pdfleet.supervisor import ChildProcess, Supervisor
from router.app import serve
from router.config import FleetConfig, load_config
from router.peers import WorkerPlace
from router.security import admin_token_from_env, check_bind

CONFIG_FILE = "config.json"
METRICS_DIR = "metrics"


def shared_port_socket(host: str, port: int) -> socket.socket:
    """This worker's share of the port: bound, not listening. The server listens once the
    worker is ready, and only then does the kernel hand it connections."""
    sock = socket.socket(address_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def make_run_dir(config: FleetConfig) -> Path:
    """The workers' private directory (mode 0700): the fleet config as they read it and a
    fresh directory for multiprocess metrics."""
    run_dir = Path(tempfile.mkdtemp(prefix="pdfleet-router-"))
    (run_dir / METRICS_DIR).mkdir()
    (run_dir / CONFIG_FILE).write_text(config.model_dump_json())
    return run_dir


def worker_processes(run_dir: Path, count: int, insecure_no_auth: bool) -> list[ChildProcess]:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(run_dir / METRICS_DIR)}
    flags = ["--insecure-no-auth"] if insecure_no_auth else []
    return [ChildProcess(f"worker {index}", [sys.executable, "-m", "router.workers",
                                             str(run_dir), str(index), str(count), *flags],
                         env=env)
            for index in range(count)]


def run_workers(config: FleetConfig, admin_token: str | None, insecure_no_auth: bool,
                count: int, say: Callable[[str], None]) -> int:
    """Serve with `count` workers until SIGINT/SIGTERM (0) or until a worker dies (1)."""
    settings = config.router
    check_bind(settings.host, admin_token, insecure_no_auth)
    taken = bind_error(settings.host, settings.port)
    if taken is not None:
        say(f"cannot serve on {settings.host}:{settings.port}: {taken.strerror}")
        return 1
    run_dir = make_run_dir(config)
    supervisor = Supervisor()
    with supervisor.stop_on_signals():
        try:
            supervisor.start(worker_processes(run_dir, count, insecure_no_auth))
            say(f"router: {count} workers on http://{settings.host}:{settings.port}")
            died = supervisor.watch()
            if died is not None:
                say(f"{died.name} exited with code {died.exit_code()}; stopping the others")
                return 1
            return 0
        finally:
            supervisor.stop()
            shutil.rmtree(run_dir, ignore_errors=True)


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
