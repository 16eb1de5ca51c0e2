"""The local fleet behind `pdfleet up`: every node with a `launch:` mapping and the router,
children of one supervisor (pdfleet/supervisor.py), started, watched and stopped together.

Nodes start first and the router once they answer `/health`, so the router's first status
poll finds them up. Each child's output goes to its own log file; when a child fails, the
tail of its log is shown.
"""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from pdfleet.ports import bind_error
from pdfleet.supervisor import ChildProcess, Supervisor
from pdfleet.vocabulary import Role
from router.config import FleetConfig, NodeSpec

POLL_INTERVAL_S = 0.2


class LaunchError(Exception):
    """The fleet could not be started; the message names the process and why."""


class Child(ChildProcess):
    """A fleet process, ready once `health_url` answers 200."""

    def __init__(self, name: str, args: list[str], health_url: str, log_path: Path) -> None:
        super().__init__(name, args, log_path)
        self.health_url = health_url

    def answers_health(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False


def _option(key: str, value: Any) -> list[str]:
    """`pdfleet node` arguments for one `launch:` entry, under the flag `pdfleet node` reads
    for that option (`faults` is `--fault RULE`, repeated)."""
    from node.cli import FLAGS  # the node's options only where a fleet launches nodes

    known = FLAGS.get(key)
    flag = known.name if known is not None and known.name else "--" + key.replace("_", "-")
    if value is True:
        return [flag]
    if value is False or value is None:
        return []
    if isinstance(value, list):
        return [arg for item in value for arg in (flag, str(item))]
    return [flag, str(value)]


def launch_flags(launch: dict[str, Any]) -> list[str]:
    """`pdfleet node` arguments for a `launch:` mapping."""
    return [arg for key, value in launch.items() for arg in _option(key, value)]


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.port is None or parts.hostname is None:
        raise LaunchError(f"{url}: a launched node's url needs an explicit host and port")
    return parts.hostname, parts.port


def node_command(spec: NodeSpec) -> list[str]:
    host, port = _host_port(spec.url)
    args = [sys.executable, "-m", "pdfleet", "node", "--role", spec.role.value,
            "--host", host, "--port", str(port)]
    if spec.bootstrap_port is not None:
        args += ["--bootstrap-port", str(spec.bootstrap_port)]
    return args + launch_flags(spec.launch or {})


def ports_in_use(config: FleetConfig) -> list[str]:
    """Every port the fleet would listen on that something else holds already."""
    wanted: list[tuple[str, int, str]] = [
        (config.router.host, config.router.port, "router")]
    for spec in config.nodes:
        if spec.launch is None:
            continue
        host, port = _host_port(spec.url)
        wanted.append((host, port, f"{spec.role.value} node {spec.url}"))
        if spec.bootstrap_port is not None and spec.role is not Role.DECODE:
            wanted.append((host, spec.bootstrap_port, f"bootstrap port of {spec.url}"))
    problems = []
    seen: dict[int, str] = {}
    for host, port, owner in wanted:
        if port in seen:
            problems.append(f"port {port} is wanted by both {seen[port]} and {owner}")
        seen[port] = owner
        if bind_error(host, port) is not None:
            problems.append(f"port {port} ({owner}) is already in use on {host}")
    return problems


class LocalFleet:
    def __init__(self, config: FleetConfig, config_path: Path, console: Console) -> None:
        self.supervisor = Supervisor()
        self.router_url = f"http://{config.router.host}:{config.router.port}"
        self.log_dir = Path(tempfile.mkdtemp(prefix="pdfleet-up-"))
        self._console = console
        self.nodes = [
            Child(f"{spec.role.value} {spec.url}", node_command(spec), f"{spec.url}/health",
                  self.log_dir / f"node-{_host_port(spec.url)[1]}.log")
            for spec in config.nodes if spec.launch is not None
        ]
        self.router = Child(
            f"router {self.router_url}",
            [sys.executable, "-m", "pdfleet", "router", "--config", str(config_path)],
            f"{self.router_url}/health", self.log_dir / "router.log",
        )

    def start(self, ready_timeout_s: float) -> bool:
        """Start the nodes, then the router, each ready (answering /health) within
        `ready_timeout_s`. False if a stop was requested meanwhile; LaunchError on failure."""
        columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
        with Progress(*columns, console=self._console, transient=False) as progress:
            for group in (self.nodes, [self.router]):
                if not self._start_group(group, progress, ready_timeout_s):
                    return False
        return True

    def _start_group(self, group: list[Child], progress: Progress, timeout_s: float) -> bool:
        self.supervisor.start(group)
        pending = {progress.add_task(f"{child.name}: starting", total=1): child
                   for child in group}
        deadline = time.monotonic() + timeout_s
        while pending:
            for task, child in list(pending.items()):
                code = child.exit_code()
                if code is not None:
                    raise LaunchError(
                        f"{child.name} exited with code {code} before it was ready\n"
                        f"{child.log_tail()}")
                if child.answers_health():
                    progress.update(task, description=f"{child.name}: [green]ready", completed=1)
                    del pending[task]
            if time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending.values())
                raise LaunchError(f"not ready within {timeout_s:.0f} s: {names}")
            if self.supervisor.stop_requested(POLL_INTERVAL_S):
                return False
        return True

    def stop(self) -> None:
        """Every process started, the router first."""
        self.supervisor.stop()


def run(config: FleetConfig, config_path: Path, ready_timeout_s: float,
        console: Console, err: Callable[[str], None]) -> int:
    """`pdfleet up`: 0 after a requested stop, 1 if the fleet failed to start or a child died."""
    try:
        problems = ports_in_use(config)
        if problems:
            raise LaunchError("; ".join(problems))
        fleet = LocalFleet(config, config_path, console)
    except LaunchError as exc:
        err(f"cannot start the fleet: {exc}")
        return 1
    with fleet.supervisor.stop_on_signals():
        try:
            if not fleet.start(ready_timeout_s):
                return 0
            console.print(f"pdfleet is up: router at [bold]{fleet.router_url}[/bold] "
                          f"(logs in {fleet.log_dir}); Ctrl-C stops it")
            died = fleet.supervisor.watch()
            if died is not None:
                err(f"{died.name} exited with code {died.exit_code()}\n{died.log_tail()}")
                return 1
            console.print("stopping the fleet")
            return 0
        except LaunchError as exc:
            err(f"cannot start the fleet: {exc}\n(logs in {fleet.log_dir})")
            return 1
        finally:
            fleet.stop()
