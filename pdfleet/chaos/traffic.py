"""Generation traffic through the router, optionally across sleep/wake cycles or refits, with
every request accounted for: completed with the reference tokens of the weight version its
reply names, refused clearly (503/409), aborted clearly, or lost (anything else: a transport
error, a cut stream, other statuses, wrong tokens)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from pdfleet.chaos.fleet import Fleet
from pdfleet.chaos.scenario import (
    MAX_TRAFFIC_S,
    ControlCall,
    PauseCall,
    RouterCall,
    Traffic,
    TrafficExpect,
    UpdateCall,
)
from pdfleet.vocabulary import WEIGHT_VERSION_HEADER

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
    # Completed requests per weight version their replies named.
    versions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"sent": self.sent, "completed": self.completed, "refused": self.refused,
                "aborted": self.aborted, "wrong_tokens": len(self.wrong), "lost": len(self.lost),
                "cycles_done": self.cycles_done, "versions": self.versions,
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
            problems.append(f"only {self.cycles_done} of {cycles} cycles completed")
        if expect.version is not None and set(self.versions) - {expect.version}:
            problems.append(f"replies named weight versions {self.versions}, expected only "
                            f"{expect.version!r}")
        return problems


def _body(prompt: str, traffic: Traffic) -> dict[str, Any]:
    return {"text": prompt, "stream": traffic.stream,
            "sampling_params": {"max_new_tokens": traffic.max_new_tokens, "temperature": 0}}


@dataclass(frozen=True)
class Completion:
    """A finished generation: its tokens and the weight version its reply named."""

    output_ids: list[int]
    version: str | None


def _named_version(reply: Any, header: str | None) -> str | None:
    """`meta_info.weight_version` (the node's own word), else the router's header."""
    meta = reply.get("meta_info") if isinstance(reply, dict) else None
    version = meta.get("weight_version") if isinstance(meta, dict) else None
    return str(version) if version is not None else header


async def _stream_ids(resp: aiohttp.ClientResponse) -> tuple[Any, str]:
    """The last chunk of an SSE reply, or None and why the stream was not whole (an
    error event's code leads the reason)."""
    last: Any = None
    async for raw in resp.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            ids = last.get("output_ids") if isinstance(last, dict) else None
            return (last, "") if isinstance(ids, list) else (None, f"no output_ids: {last}")
        last = json.loads(data)
        if isinstance(last, dict) and "error" in last:
            error = last["error"]
            code = error.get("code") if isinstance(error, dict) else None
            return None, f"{code} stream error event: {error}"
    return None, "the stream ended without [DONE]"


async def generate(fleet: Fleet, prompt: str, traffic: Traffic) -> tuple[str, Any]:
    """One request: ("ok", Completion) | ("refused", why) | ("aborted", why) |
    ("lost", why)."""
    try:
        async with fleet.session.post(
                f"{fleet.router_url}/generate", json=_body(prompt, traffic),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
            header = resp.headers.get(WEIGHT_VERSION_HEADER)
            if resp.status == 200 and traffic.stream:
                reply, why = await _stream_ids(resp)
            elif resp.status == 200:
                reply, why = await resp.json(), "no output_ids"
            else:
                text = (await resp.text(errors="replace"))[:300]
                if resp.status in CLEAR_REFUSALS and text:
                    return "refused", text
                if "abort" in text.lower():
                    return "aborted", text
                return "lost", f"status {resp.status}: {text}"
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        return "lost", f"{type(exc).__name__}: {exc}"
    ids = reply.get("output_ids") if isinstance(reply, dict) else None
    if not isinstance(ids, list):
        if why.split(" ", 1)[0] in {str(code) for code in CLEAR_REFUSALS}:
            return "refused", why
        return ("aborted", why) if "abort" in why.lower() else ("lost", why)
    return "ok", Completion(ids, _named_version(reply, header))


def refit_version(seed: int) -> str:
    return f"seed-{seed}"


def _cycle_calls(traffic: Traffic, cycle: int) -> list[tuple[str, RouterCall]]:
    if traffic.sleep_wake_cycles:
        return [("release", ControlCall(tags=traffic.cycle_tags, drain=traffic.cycle_drain)),
                ("resume", ControlCall(tags=traffic.cycle_tags))]
    seed = traffic.refit_seeds[cycle % len(traffic.refit_seeds)]
    return [("pause", PauseCall(mode=traffic.refit_mode)),
            ("update", UpdateCall(seed=seed, version=refit_version(seed))),
            ("continue", RouterCall())]


async def _cycles(fleet: Fleet, traffic: Traffic, result: TrafficResult,
                  control_timeout_s: float) -> None:
    for cycle in range(traffic.cycles):
        for operation, call in _cycle_calls(traffic, cycle):
            reply = await fleet.control(operation, call, control_timeout_s)
            if reply.status != 200:
                result.cycle_problems.append(
                    f"cycle {cycle + 1}: {operation} answered {reply.status}: {reply.body}")
                return
            await asyncio.sleep(traffic.asleep_s)  # how long the fleet stays in this state
        result.cycles_done += 1


async def _references(fleet: Fleet, traffic: Traffic, result: TrafficResult,
                      control_timeout_s: float) -> dict[str | None, dict[str, list[int]]]:
    """Per weight version, each prompt's tokens: the fleet's current version, then (for
    refits) each of the refit seeds' versions, the fleet updated to each in turn. Empty, with
    the reason in `result`, when a reference could not be had."""
    versions: list[str | None] = [None]
    versions += [refit_version(seed) for seed in traffic.refit_seeds if traffic.refit_cycles]
    references: dict[str | None, dict[str, list[int]]] = {}
    for version in versions:
        if version is not None:
            seed = traffic.refit_seeds[versions.index(version) - 1]
            reply = await fleet.control("update", UpdateCall(seed=seed, version=version),
                                        control_timeout_s)
            if reply.status != 200:
                result.lost.append(f"updating the fleet to {version} for its reference "
                                   f"tokens answered {reply.status}: {reply.body}")
                return {}
        for prompt in traffic.prompts:
            outcome, value = await generate(fleet, prompt, traffic)
            if outcome != "ok":
                result.lost.append(f"reference request for {prompt!r}: {outcome}: {value}")
                return {}
            references.setdefault(value.version, {})[prompt] = value.output_ids
    return references


async def run_traffic(fleet: Fleet, traffic: Traffic, control_timeout_s: float
                      ) -> TrafficResult:
    result = TrafficResult()
    references = await _references(fleet, traffic, result, control_timeout_s)
    if not references:
        return result
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
            if outcome == "ok":
                reference = references.get(value.version, {}).get(prompt)
                result.versions[str(value.version)] = (
                    result.versions.get(str(value.version), 0) + 1)
                if value.output_ids == reference:
                    result.completed += 1
                else:
                    result.wrong.append(f"{prompt!r} named version {value.version!r}: got "
                                        f"{value.output_ids}, reference {reference}")
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
