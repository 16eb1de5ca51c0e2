"""The `pdfleet` command: start routers, nodes and local fleets; drive and watch a fleet."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import typer
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from pdfleet.configs import CHAOS_SCENARIOS, LOCAL_FLEET
from pdfleet.printable import printable
from pdfleet.vocabulary import Operation
from router.control.report import ControlReport
from router.registry import NodeStatus
from router.routes.schemas import ClusterStatus
from router.security import admin_token_from_env

DEFAULT_ROUTER = "http://127.0.0.1:8000"

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
# Logs and pipes get wide tables; a terminal gets its own width.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

RouterOpt = Annotated[
    str, typer.Option("--router", envvar="PDFLEET_ROUTER", help="Router base URL.")
]


def _load_config(path: Path) -> Any:
    from router.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def router(
    config: Annotated[Path, typer.Option(help="Fleet config YAML.")] = LOCAL_FLEET,
    host: Annotated[str | None, typer.Option(help="Override router.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Override router.port.")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option(help="Allow a non-loopback bind without an admin token.")
    ] = False,
    workers: Annotated[int, typer.Option(
        min=1, help="Router processes sharing the port (SO_REUSEPORT), one fleet view.")] = 1,
) -> None:
    """Run the router alone."""
    from router.app import serve
    from router.workers import run_workers

    fleet = _load_config(config)
    if host is not None:
        fleet.router.host = host
    if port is not None:
        fleet.router.port = port
    if workers == 1:
        serve(fleet, admin_token_from_env(), insecure_no_auth)
        return
    code = run_workers(fleet, admin_token_from_env(), insecure_no_auth, workers,
                       lambda message: err_console.print(message))
    raise typer.Exit(code)


@app.command()
def up(
    config: Annotated[
        Path, typer.Option(help="Fleet config YAML (default: the embedded local fleet).")
    ] = LOCAL_FLEET,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds each process may take to answer /health.")
    ] = 180,
) -> None:
    """Start a local fleet: every node with a `launch:` mapping, then the router; Ctrl-C
    stops them all."""
    from pdfleet.launcher import run

    fleet = _load_config(config)
    code = run(fleet, config.resolve(), ready_timeout, console,
               lambda message: err_console.print(f"[red]{message}[/red]"))
    raise typer.Exit(code)


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def node(ctx: typer.Context) -> None:
    """Run one node serving the reference model (`pdfleet node --help` lists the options)."""
    from node.cli import main

    main(ctx.args)


def _headers() -> dict[str, str]:
    token = admin_token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}


async def _request(method: str, url: str, payload: Any, wait_s: float) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=wait_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.request(method, url, json=payload, headers=_headers()) as resp:
            text = await resp.text(errors="replace")
            try:
                return resp.status, json.loads(text)
            except ValueError:
                return resp.status, text


def _try_router(method: str, url: str, payload: Any, wait_s: float) -> tuple[int, Any] | str:
    """The router's status and reply, or why it could not be reached."""
    try:
        return asyncio.run(_request(method, url, payload, wait_s))
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        return f"{url}: {type(exc).__name__}: {exc}"


def _call_router(method: str, url: str, payload: Any = None, wait_s: float = 30) -> tuple[int, Any]:
    reply = _try_router(method, url, payload, wait_s)
    if isinstance(reply, str):
        err_console.print(f"[red]router unreachable:[/red] {reply}")
        raise typer.Exit(2)
    return reply


def _node_name(url: str) -> str:
    return url.removeprefix("http://")


def _fmt_bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.2f} {unit}"
        size /= 1024
    return "-"


def _yes_no(value: bool | str) -> str:
    """A tri-state flag in words: yes, no, or the router's "unknown"."""
    return value if isinstance(value, str) else "yes" if value else "no"


def _node_version(node: NodeStatus) -> Text:
    """The weights a node serves, `stale` beside it when they are not the fleet's."""
    version = Text(printable(node.weight_version) if node.weight_version is not None else "none")
    if node.stale:
        version.append(" stale", style="bold yellow")
    return version


def _parse_tags(tags: str | None) -> list[str] | None:
    """The tags of `--tags`, None when the option is absent; a value naming no tag ("" or
    only commas) is a usage error rather than "every tag"."""
    if tags is None:
        return None
    names = [t.strip() for t in tags.split(",") if t.strip()]
    if not names:
        err_console.print(f"[red]usage:[/red] --tags {tags!r} names no tag; "
                          "leave --tags out for every tag")
        raise typer.Exit(2)
    return names


def _short_operation(name: str | None) -> str:
    try:
        return Operation(name).short
    except ValueError:
        return name or "-"


def _control(
    operation: Operation, tags: str | None, timeout: float | None, router_url: str
) -> None:
    names = _parse_tags(tags)
    payload: dict[str, Any] = {} if names is None else {"tags": names}
    url = f"{router_url.rstrip('/')}/{operation}"
    if timeout is not None:
        url += f"?timeout={timeout}"
    status, body = _call_router("POST", url, payload, wait_s=(timeout or 120) + 15)
    report = ControlReport.from_reply(status, body)
    if report is None:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        err_console.print(f"[red]router refused ({status}):[/red] {printable(str(detail))}")
        raise typer.Exit(2)
    table = Table(title=f"{operation}: {len(report.nodes)} ok, {len(report.failures)} failed",
                  box=box.SIMPLE_HEAD)
    table.add_column("node", no_wrap=True)
    # What the node released or resumed (its regions' bytes), and beside it the change in
    # memory it measured, which the allocator may not show at once.
    for column in ("role", "result", "status / error", "elapsed", "released / resumed",
                   "measured change"):
        table.add_column(column)
    for row in report.nodes:
        result = row.result if isinstance(row.result, dict) else {}
        moved = result.get("released_bytes", result.get("resumed_bytes"))
        measured = result.get("freed_bytes", result.get("restored_bytes"))
        table.add_row(_node_name(row.server), row.role, "[green]ok[/green]",
                      str(row.status), f"{row.elapsed_ms:.0f} ms", _fmt_bytes(moved),
                      _fmt_bytes(measured))
    for row in report.failures:
        why = printable(row.error or f"{row.status}: {row.detail or ''}")
        table.add_row(_node_name(row.server), row.role, "[red]failed[/red]", Text(why),
                      f"{row.elapsed_ms:.0f} ms", "-", "-")
    console.print(table)
    raise typer.Exit(1 if report.failures else 0)


TagsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated tags, e.g. weights,kv_cache (default all).")
]
TimeoutOpt = Annotated[float | None, typer.Option(help="Whole fan-out deadline in seconds.")]


@app.command()
def sleep(tags: TagsOpt = None, timeout: TimeoutOpt = None,
          router: RouterOpt = DEFAULT_ROUTER) -> None:
    """Release memory on every node of the fleet."""
    _control(Operation.RELEASE, tags, timeout, router)


@app.command()
def wake(tags: TagsOpt = None, timeout: TimeoutOpt = None,
         router: RouterOpt = DEFAULT_ROUTER) -> None:
    """Resume memory on every node of the fleet."""
    _control(Operation.RESUME, tags, timeout, router)


PAUSE_MODES = ("abort", "in_place")


def _operation_url(router_url: str, operation: Operation, timeout: float | None) -> str:
    url = f"{router_url.rstrip('/')}/{operation}"
    return url if timeout is None else f"{url}?timeout={timeout}"


def _refit_step(table: Table, operation: Operation, payload: dict[str, Any],
                timeout: float | None, router_url: str) -> ControlReport | str:
    """One step of a refit through the router, its nodes added to `table`; the report, or
    why the router gave none."""
    reply = _try_router("POST", _operation_url(router_url, operation, timeout), payload,
                        (timeout or 120) + 15)
    if isinstance(reply, str):
        return f"router unreachable: {reply}"
    status, body = reply
    report = ControlReport.from_reply(status, body)
    if report is None:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        return f"router refused {operation.short} ({status}): {printable(str(detail))}"
    for row in report.nodes:
        result = row.result if isinstance(row.result, dict) else {}
        outcome = printable(str(result.get("noop") or "ok"))  # a no-op says why
        table.add_row(operation.short, _node_name(row.server), row.role,
                      f"[green]{outcome}[/green]",
                      "-" if row.status is None else str(row.status),
                      f"{row.elapsed_ms:.0f} ms")
    for row in report.failures:
        why = printable(row.error or f"{row.status}: {row.detail or ''}")
        table.add_row(operation.short, _node_name(row.server), row.role, "[red]failed[/red]",
                      Text(why), f"{row.elapsed_ms:.0f} ms")
    return report


@app.command()
def refit(
    model_path: Annotated[str, typer.Option(help="The checkpoint every node loads.")],
    version: Annotated[str | None, typer.Option(
        help="The weight version the nodes serve afterwards; nodes already at it are "
             "skipped.")] = None,
    mode: Annotated[str, typer.Option(
        help="What the pause does with in-flight requests: abort, or in_place (frozen "
             "until generation continues).")] = "abort",
    timeout: TimeoutOpt = None,
    router: RouterOpt = DEFAULT_ROUTER,
) -> None:
    """Pause generation, update every node's weights from disk, continue generation. A
    failed pause or update stops the refit, but generation continues in any case: the
    fleet is never left paused."""
    if mode not in PAUSE_MODES:
        err_console.print(f"[red]usage:[/red] --mode must be one of {', '.join(PAUSE_MODES)}; "
                          f"got {mode!r}")
        raise typer.Exit(2)
    update: dict[str, Any] = {"model_path": model_path}
    if version is not None:
        update["weight_version"] = version
    table = Table(title=f"refit to {model_path}" + (f" ({version})" if version else ""),
                  box=box.SIMPLE_HEAD)
    table.add_column("step")
    table.add_column("node", no_wrap=True)
    for column in ("role", "result", "status / error", "elapsed"):
        table.add_column(column)
    steps = [(Operation.PAUSE, {"mode": mode}), (Operation.UPDATE_FROM_DISK, update)]
    stopped: str | None = None  # why the refit stopped before the last step
    outcomes: list[ControlReport | str] = []
    for operation, payload in steps:
        outcome = _refit_step(table, operation, payload, timeout, router)
        outcomes.append(outcome)
        if isinstance(outcome, str) or outcome.failures:
            stopped = outcome if isinstance(outcome, str) else (
                f"{operation.short} failed on {len(outcome.failures)}/{outcome.total} nodes")
            break
    outcomes.append(_refit_step(table, Operation.CONTINUE, {}, timeout, router))
    console.print(table)
    refusals = [outcome for outcome in outcomes if isinstance(outcome, str)]
    for refusal in refusals:
        err_console.print(f"[red]{refusal}[/red]")
    if stopped is not None:
        console.print(f"refit stopped: {stopped}; generation continued. Run it again to "
                      "update the nodes left behind.")
    failed = any(not isinstance(o, str) and o.failures for o in outcomes)
    raise typer.Exit(2 if refusals else 1 if failed else 0)


@app.command()
def status(router: RouterOpt = DEFAULT_ROUTER,
           as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show every node's state."""
    code, body = _call_router("GET", f"{router.rstrip('/')}/cluster/status")
    try:
        fleet = ClusterStatus.model_validate(body) if code == 200 else None
    except ValidationError:
        fleet = None
    if fleet is None:
        err_console.print(f"[red]router refused ({code}):[/red] {body}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(body, indent=2))
        return
    summary = fleet.summary
    version = "none" if fleet.weight_version is None else printable(repr(fleet.weight_version))
    table = Table(title=(f"{summary.total} nodes: {summary.up} up, {summary.down} down, "
                         f"{summary.sleeping} sleeping, {summary.stale} stale; weight version "
                         f"{version} ({fleet.version_policy})"), box=box.SIMPLE_HEAD)
    table.add_column("node", no_wrap=True)
    for column in ("role", "engine", "health", "asleep", "released", "version", "memory used",
                   "in flight", "last op", "last error"):
        table.add_column(column)
    for n in fleet.nodes:
        memory = n.memory if isinstance(n.memory, dict) else {}
        released = n.released_tags
        # A discovered node: the pod it runs in, and its phase while it does not serve.
        where = "" if n.pod is None else f" (pod {n.pod}" + (
            ")" if n.phase == "serving" else f", {n.phase})")
        table.add_row(
            _node_name(n.server) + where, n.role, n.engine, n.health, _yes_no(n.sleeping),
            ",".join(released) if isinstance(released, list) else released,
            _node_version(n), _fmt_bytes(memory.get("used_bytes")), str(n.inflight),
            _short_operation(n.last_op), Text(printable(n.last_error or "-")),
        )
    console.print(table)


@app.command()
def faultproxy(
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")],
    upstream: Annotated[str, typer.Option(help="Base URL of the node behind the proxy.")],
    fault: Annotated[list[str] | None, typer.Option(
        "--fault", help="Fault rule (repeatable), e.g. route=/flush_cache,kind=status,code=500."
    )] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the rules' `p` draws.")] = None,
) -> None:
    """Fault rules in front of any HTTP node; everything else passes through unchanged."""
    from node.faults.rules import FaultRuleError, FaultSet, parse_rule
    from pdfleet.faultproxy import ProxySettings, serve

    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not upstream.startswith(("http://", "https://")):
        err_console.print("[red]usage:[/red] --listen HOST:PORT --upstream http://HOST:PORT")
        raise typer.Exit(2)
    try:
        faults = FaultSet((parse_rule(rule) for rule in fault or []), seed=seed)
    except FaultRuleError as exc:
        err_console.print(f"[red]bad --fault:[/red] {exc}")
        raise typer.Exit(2) from None
    serve(ProxySettings(host=host.strip("[]"), port=int(port), upstream=upstream,
                        admin_token=admin_token_from_env()), faults)


@app.command()
def chaos(
    scenarios: Annotated[Path, typer.Option(help="Scenario file (YAML).")] = CHAOS_SCENARIOS,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML here.")] = None,
    json_report: Annotated[Path | None, typer.Option(
        "--json", help="Write the JSON report here.")] = None,
    router: Annotated[str | None, typer.Option(
        "--router", help="Run against this fleet instead of starting a local one.")] = None,
    ready_timeout: Annotated[
        float, typer.Option(help="Seconds each local process may take to answer /health.")
    ] = 180,
) -> None:
    """Run failure scenarios against a fleet; exit 0 only when every one matched."""
    from pdfleet.chaos.command import run

    code = run(scenarios, junit, json_report, router, ready_timeout, console,
               lambda message: err_console.print(f"[red]{message}[/red]"))
    raise typer.Exit(code)
