"""Generation traffic through the router, optionally across sleep/wake cycles, with every
request accounted for: completed with the reference tokens, refused clearly (503/409), aborted
clearly, or lost (anything else: a transport error, a cut stream, other statuses, wrong
tokens)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pdfleet.chaos.fleet import Fleet
from pdfleet.chaos.scenario import MAX_TRAFFIC_S, ControlCall, Traffic, TrafficExpect

REQUEST_TIMEOUT_S = 60.0
# A refused client backs off briefly instead of spinning on a sleeping fleet.
REFUSED_BACKOFF_S = 0.1
CLEAR_REFUSALS = (503, 409)
EXAMPLES_KEPT = 5


@dataclass
class TrafficResult:
    sent: int = 0
    completed: int = 0
    refused: int = 0
    aborted: int = 0
    wrong: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    cycle_problems: list[str] = field(default_factory=list)
    cycles_done: int = 0

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "completed": self.completed, "refused": self.refused,
                "aborted": self.aborted, "wrong_tokens": len(self.wrong), "lost": len(self.lost),
                "cycles_done": self.cycles_done,
                "examples": (self.wrong + self.lost)[:EXAMPLES_KEPT]}

    def mismatches(self, expect: TrafficExpect, cycles: int) -> list[str]:
        problems = list(self.cycle_problems)
        if self.lost:
            problems.append(f"{len(self.lost)} of {self.sent} requests lost silently, e.g. "
                            + "; ".join(self.lost[:EXAMPLES_KEPT]))
        if self.wrong:
            problems.append(f"{len(self.wrong)} of {self.sent} requests completed with tokens "
                            "other than the reference, e.g. "
                            + "; ".join(self.wrong[:EXAMPLES_KEPT]))
        if self.completed < expect.min_completed:
            problems.append(f"only {self.completed} requests completed, expected at least "
                            f"{expect.min_completed}")
        if self.cycles_done < cycles:
            problems.append(f"only {self.cycles_done} of {cycles} sleep/wake cycles completed")
        return problems


def _body(prompt: str, traffic: Traffic) -> dict[str, Any]:
    return {"text": prompt, "stream": traffic.stream,
            "sampling_params": {"max_new_tokens": traffic.max_new_tokens, "temperature": 0}}


async def _stream_ids(resp: aiohttp.ClientResponse) -> tuple[list[int] | None, str]:
    """The final output ids of an SSE reply, or None and why the stream was not whole (an
    error event's code leads the reason)."""
    last: Any = None
    async for raw in resp.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            ids = last.get("output_ids") if isinstance(last, dict) else None
            return (ids, "") if isinstance(ids, list) else (None, f"no output_ids: {last}")
        last = json.loads(data)
        if isinstance(last, dict) and "error" in last:
            error = last["error"]
            code = error.get("code") if isinstance(error, dict) else None
            return None, f"{code} stream error event: {error}"
    return None, "the stream ended without [DONE]"


async def generate(fleet: Fleet, prompt: str, traffic: Traffic) -> tuple[str, Any]:
    """One request: ("ok", output_ids) | ("refused", why) | ("aborted", why) | ("lost", why)."""
    try:
        async with fleet.session.post(
                f"{fleet.router_url}/generate", json=_body(prompt, traffic),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
            if resp.status == 200 and traffic.stream:
                ids, why = await _stream_ids(resp)
            elif resp.status == 200:
                ids, why = (await resp.json()).get("output_ids"), "no output_ids"
            else:
                text = (await resp.text(errors="replace"))[:300]
                if resp.status in CLEAR_REFUSALS and text:
                    return "refused", text
                if "abort" in text.lower():
                    return "aborted", text
                return "lost", f"status {resp.status}: {text}"
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return "lost", f"{type(exc).__name__}: {exc}"
    if ids is None:
        if why.split(" ", 1)[0] in {str(code) for code in CLEAR_REFUSALS}:
            return "refused", why
        return ("aborted", why) if "abort" in why.lower() else ("lost", why)
    return "ok", ids


async def _cycles(fleet: Fleet, traffic: Traffic, result: TrafficResult,
                  control_timeout_s: float) -> None:
    calls = {"release": ControlCall(tags=traffic.cycle_tags, drain=traffic.cycle_drain),
             "resume": ControlCall(tags=traffic.cycle_tags)}
    for cycle in range(traffic.sleep_wake_cycles):
        for operation, call in calls.items():
            reply = await fleet.control(operation, call, control_timeout_s)
            if reply.status != 200:
                result.cycle_problems.append(
                    f"cycle {cycle + 1}: {operation} answered {reply.status}: {reply.body}")
                return
            await asyncio.sleep(traffic.asleep_s)  # how long the fleet stays in this state
        result.cycles_done += 1


async def run_traffic(fleet: Fleet, traffic: Traffic, control_timeout_s: float
                      ) -> TrafficResult:
    result = TrafficResult()
    reference: dict[str, list[int]] = {}
    for prompt in traffic.prompts:
        outcome, value = await generate(fleet, prompt, traffic)
        if outcome != "ok":
            result.lost.append(f"reference request for {prompt!r}: {outcome}: {value}")
            return result
        reference[prompt] = value
    started = time.monotonic()
    cycles = asyncio.create_task(_cycles(fleet, traffic, result, control_timeout_s))
    numbers = itertools.count()

    def finished() -> bool:
        elapsed = time.monotonic() - started
        if elapsed > MAX_TRAFFIC_S:
            return True
        enough = (traffic.requests is not None and result.sent >= traffic.requests) or (
            traffic.seconds is not None and elapsed >= traffic.seconds)
        return enough and cycles.done()

    async def client() -> None:
        while not finished():
            prompt = traffic.prompts[next(numbers) % len(traffic.prompts)]
            result.sent += 1
            outcome, value = await generate(fleet, prompt, traffic)
            if outcome == "ok" and value == reference[prompt]:
                result.completed += 1
            elif outcome == "ok":
                result.wrong.append(f"{prompt!r}: got {value}, reference {reference[prompt]}")
            elif outcome == "lost":
                result.lost.append(f"{prompt!r}: {value}")
            else:
                setattr(result, outcome, getattr(result, outcome) + 1)
                await asyncio.sleep(REFUSED_BACKOFF_S)

    try:
        await asyncio.gather(*(client() for _ in range(traffic.concurrency)))
    finally:
        if not cycles.done():
            cycles.cancel()
    await asyncio.gather(cycles, return_exceptions=True)
    return result
