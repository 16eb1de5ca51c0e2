"""pdfleet as a user installs it: a wheel built from this tree, installed into a fresh
environment, runs its commands with their shipped defaults from a directory outside the
repository.

The fresh environment gets the wheel alone (`--no-deps`, no index); it sees the test
environment's packages through a .pth file, so nothing is downloaded. Directories a .pth file
adds have their own .pth files ignored, so the test environment's editable pdfleet stays out.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml

from pdfleet.configs import LOCAL_FLEET
from pdfleet.ports import bind_error
from tests.procs import ROOT, Process, free_port, wait_http_ok

STARTUP_S = 150
# What a checkout holds besides the source a wheel is built from (.gitignore's entries and
# .git); `build/` would hand setuptools stale copies of removed files.
NOT_SOURCE = (".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".ci", "out",
              ".whl", ".schemathesis", ".hypothesis")


@dataclass
class Installed:
    bin: Path
    elsewhere: Path  # a working directory outside the repository

    def command(self, *args: str) -> list[str]:
        return [str(self.bin / "pdfleet"), *args]


def run(*args: str | Path, cwd: Path | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    source, dist, venv = base / "source", base / "dist", base / "venv"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
        "-w", dist, source)
    (wheel,) = dist.glob("pdfleet-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so pip does not find the editable pdfleet installed.
    run(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
        "--no-index", wheel)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .strip())
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "test-environment.pth").write_text("".join(f"{path}\n" for path in sorted(ours)))
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return Installed(venv / "bin", elsewhere)


def children_of(process: Process) -> list[psutil.Process]:
    return psutil.Process(process.proc.pid).children(recursive=True)


def stop_and_check_gone(process: Process, children: list[psutil.Process]) -> None:
    process.stop(timeout=30)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert alive == [], f"left running: {alive}"


def test_the_installed_wheel_is_what_runs(installed):
    code = ("import node, pdfleet, router, pdfleet.configs as c; "
            "print(node.__file__, pdfleet.__file__, router.__file__, c.LOCAL_FLEET, "
            "c.CHAOS_SCENARIOS)")
    # `python -c` puts its working directory first on sys.path: from the repository it would
    # import the checkout, so this runs where a user would.
    paths = run(installed.bin / "python", "-c", code, cwd=installed.elsewhere).split()
    venv = installed.bin.parent
    assert all(Path(path).is_relative_to(venv) for path in paths), paths
    assert all(Path(path).is_file() for path in paths), paths


@pytest.mark.timeout(STARTUP_S + 60)
def test_chaos_reads_its_shipped_scenarios_and_starts_its_fleet(installed):
    chaos = Process(installed.command("chaos"), stdout=subprocess.PIPE, cwd=installed.elsewhere)
    children: list[psutil.Process] = []
    try:
        # Printed once the scenario file was read and the fleet it names answers.
        ready = "local fleet up: router at "
        router_url = chaos.wait_for_line(ready, STARTUP_S).removeprefix(ready).split()[0]
        wait_http_ok(f"{router_url}/health", chaos)
        children = children_of(chaos)
        assert len(children) >= 3  # a prefill node, a decode node, the router
    finally:
        stop_and_check_gone(chaos, children)


@pytest.mark.timeout(STARTUP_S + 60)
def test_up_starts_the_shipped_local_fleet(installed):
    fleet = yaml.safe_load(LOCAL_FLEET.read_text())
    router = fleet["router"]
    ports = [router["port"], *(int(n["url"].rsplit(":", 1)[1]) for n in fleet["nodes"]),
             *(n["bootstrap_port"] for n in fleet["nodes"] if "bootstrap_port" in n)]
    taken = [port for port in ports if bind_error(router["host"], port) is not None]
    if taken:
        pytest.skip(f"the shipped fleet's ports {taken} are in use on this machine")
    up = Process(installed.command("up"), cwd=installed.elsewhere)
    children: list[psutil.Process] = []
    try:
        wait_http_ok(f"http://{router['host']}:{router['port']}/health", up, timeout=STARTUP_S)
        children = children_of(up)
        os.kill(up.proc.pid, signal.SIGTERM)
        assert up.proc.wait(30) == 0, up.output()
    finally:
        stop_and_check_gone(up, children)


@pytest.mark.timeout(90)
def test_router_starts_with_the_shipped_config(installed):
    port = free_port()
    router = Process(installed.command("router", "--port", str(port)), cwd=installed.elsewhere)
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/health", router, timeout=60)
    finally:
        code = router.stop()
    assert code in (0, -signal.SIGTERM), router.output()  # SIGTERM was enough, not SIGKILL
