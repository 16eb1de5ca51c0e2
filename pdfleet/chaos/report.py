"""The harness's outputs: a live table, JUnit XML (one testcase per scenario, the mismatch and
the router's reply as the failure) and a JSON report."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from rich import box
from rich.table import Table

from pdfleet.chaos.runner import ScenarioResult

REPLY_CHARS = 4000


def new_table() -> Table:
    table = Table(title="pdfleet chaos", box=box.SIMPLE_HEAD)
    for column in ("scenario", "result", "time", "first mismatch"):
        table.add_column(column, overflow="fold")
    return table


def add_row(table: Table, result: ScenarioResult) -> None:
    if result.error is not None:
        outcome, why = "[red]error[/red]", result.error
    elif result.passed:
        outcome, why = "[green]pass[/green]", ""
    else:
        outcome, why = "[red]FAIL[/red]", result.mismatches[0]
    table.add_row(result.name, outcome, f"{result.elapsed_s:.1f} s", why)


def failure_text(result: ScenarioResult) -> str:
    """Every mismatch, then what the router answered in each step."""
    lines = [result.error] if result.error else []
    lines += result.mismatches
    for i, step in enumerate(result.steps):
        shown = step.traffic if step.traffic is not None else step.reply
        reply = json.dumps(shown, indent=1, default=str)
        if len(reply) > REPLY_CHARS:
            reply = reply[:REPLY_CHARS] + " ...(cut)"
        status = f" -> {step.status}" if step.status is not None else ""
        lines.append(f"step {i + 1} ({step.description}){status} in {step.elapsed_s:.2f} s:\n"
                     f"{reply}")
    return "\n".join(lines)


def write_junit(path: Path, results: list[ScenarioResult], suite: str) -> None:
    total_s = sum(r.elapsed_s for r in results)
    failures = sum(1 for r in results if r.error is None and not r.passed)
    errors = sum(1 for r in results if r.error is not None)
    root = ElementTree.Element("testsuites", name="pdfleet chaos", tests=str(len(results)),
                               failures=str(failures), errors=str(errors),
                               time=f"{total_s:.3f}")
    suite_el = ElementTree.SubElement(
        root, "testsuite", name=suite, tests=str(len(results)), failures=str(failures),
        errors=str(errors), skipped="0", time=f"{total_s:.3f}",
        timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        hostname=socket.gethostname())
    for result in results:
        case = ElementTree.SubElement(suite_el, "testcase", classname=f"pdfleet.chaos.{suite}",
                                      name=result.name, time=f"{result.elapsed_s:.3f}")
        if result.error is not None:
            element = ElementTree.SubElement(case, "error", message=result.error[:500],
                                             type="HarnessError")
            element.text = failure_text(result)
        elif not result.passed:
            element = ElementTree.SubElement(case, "failure", message=result.mismatches[0][:500],
                                             type="ExpectationMismatch")
            element.text = failure_text(result)
        out = ElementTree.SubElement(case, "system-out")
        out.text = result.description
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def json_report(results: list[ScenarioResult], scenarios_file: str, router: str
                ) -> dict[str, Any]:
    return {
        "scenarios_file": scenarios_file,
        "router": router,
        "passed": all(r.passed for r in results),
        "summary": {"total": len(results), "passed": sum(r.passed for r in results),
                    "failed": sum(not r.passed for r in results)},
        "scenarios": [{**asdict(r), "passed": r.passed, "mismatches": r.mismatches}
                      for r in results],
    }
