"""The scenario file: YAML validated like the fleet config, an unknown key is an error naming
it. Fault rules are parsed here too, so a bad rule fails before any fleet is started."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from node.faults.rules import FaultRuleError, parse_rule
from pdfleet.vocabulary import Role
from router.config import describe_validation_error, read_yaml

ErrorKind = Literal["refused", "reset", "timeout", "other"]
OPERATIONS = ("release", "resume", "flush", "pause", "continue", "update", "traffic")
MAX_TRAFFIC_S = 300.0
MAX_BODY_BYTES = 64 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetNode(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    role: Role
    # With --router: which of the router's nodes this is (default: the next one of its role).
    url: str | None = None
    # For a local fleet: extra `pdfleet node` options.
    launch: dict[str, Any] = {}


class FleetSpec(_Strict):
    nodes: list[FleetNode] = Field(default_factory=lambda: [
        FleetNode(name="prefill", role=Role.PREFILL), FleetNode(name="decode", role=Role.DECODE)])
    # For a local fleet: router settings (as in the fleet config) other than host and port.
    router: dict[str, Any] = {}


DrainMode = Literal["wait", "abort"]
PauseMode = Literal["abort", "in_place", "retract"]
RefitMode = Literal["abort", "in_place"]


QueryValue = str | int | float


class RouterCall(_Strict):
    """A call of one of the router's fan-out routes."""

    # A list repeats the key (`role: [decode, prefill]` is `?role=decode&role=prefill`).
    query: dict[str, QueryValue | list[QueryValue]] = {}
    # More body fields, sent as given: a caller's mistake such as a misspelt field.
    body: dict[str, Any] = {}

    def query_string(self) -> str:
        return urlencode(self.query, doseq=True)

    def payload(self) -> dict[str, Any]:
        """The body's fields of this kind of call, then `body` as given."""
        return dict(self.body)


class ControlCall(RouterCall):
    tags: list[str] | None = None
    # Release only: how the nodes end in-flight requests (SGLang body field, sent verbatim).
    drain: DrainMode | None = None
    # The body padded with spaces to this size, to send more than a node accepts.
    body_bytes: int | None = Field(None, ge=1, le=MAX_BODY_BYTES)

    def payload(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"tags": self.tags} if self.tags else {}
        if self.drain is not None:
            fields["drain"] = self.drain
        return {**fields, **self.body}


class PauseCall(RouterCall):
    mode: PauseMode = "abort"

    def payload(self) -> dict[str, Any]:
        return {"mode": self.mode, **self.body}


class Checkpoint(_Strict):
    """Which weights an update sends: the fleet's model with another seed (the harness writes
    the file, as `pdfleet node --save-weights` does), a file by path, or a file that is not a
    checkpoint at all."""

    seed: int | None = None
    model_path: str | None = None
    bad_file: bool = False

    @model_validator(mode="after")
    def _one_source(self) -> Checkpoint:
        given = [self.seed is not None, self.model_path is not None, self.bad_file]
        if sum(given) != 1:
            raise ValueError("an update names exactly one of seed, model_path, bad_file")
        return self


class UpdateCall(RouterCall, Checkpoint):
    """update_weights_from_disk through the router."""

    version: str | None = None

    def payload(self) -> dict[str, Any]:
        # The file's path is the harness's to fill in (Fleet.checkpoint_path).
        fields = {"weight_version": self.version} if self.version is not None else {}
        return {**fields, **self.body}


class Traffic(_Strict):
    """Greedy generation through the router; each reply is checked against the reference
    tokens for its prompt, taken first. Bounded by `requests` or `seconds`, whichever comes
    first, and in any case it lasts until the sleep/wake cycles are done."""

    requests: int | None = Field(None, ge=1, le=5000)
    seconds: float | None = Field(None, gt=0, le=MAX_TRAFFIC_S)
    concurrency: int = Field(4, ge=1, le=64)
    max_new_tokens: int = Field(8, ge=1, le=256)
    prompts: list[str] = Field(default_factory=lambda: [
        "The quick brown fox", "Once upon a time", "pdfleet sleeps and wakes"], min_length=1)
    stream: bool = False
    sleep_wake_cycles: int = Field(0, ge=0, le=50)
    cycle_tags: list[str] | None = None
    cycle_drain: DrainMode | None = None
    # How long the fleet stays asleep in each cycle.
    asleep_s: float = Field(0.5, ge=0, le=60)
    # Refits during the traffic: pause, update to the next of `refit_seeds`' weights (version
    # `seed-N`), continue. Each completed reply must carry the tokens of the version it names.
    refit_cycles: int = Field(0, ge=0, le=50)
    refit_seeds: list[int] = Field(default_factory=lambda: [7, 0], min_length=1)
    refit_mode: RefitMode = "abort"

    @model_validator(mode="after")
    def _bounded(self) -> Traffic:
        if self.requests is None and self.seconds is None:
            raise ValueError("traffic needs `requests` or `seconds` (it must be bounded)")
        if self.sleep_wake_cycles and self.refit_cycles:
            raise ValueError("traffic has sleep_wake_cycles or refit_cycles, not both")
        return self

    @property
    def cycles(self) -> int:
        return self.sleep_wake_cycles or self.refit_cycles


class NodeFailure(_Strict):
    status: int | None = Field(None, ge=100, le=599)
    error: ErrorKind | None = None
    detail_contains: str | None = None
    detail_max_chars: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_way(self) -> NodeFailure:
        if (self.status is None) == (self.error is None):
            raise ValueError("a node failure is either `status: CODE` or `error: KIND`")
        return self


class Bounds(_Strict):
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, gt=0)


class TrafficExpect(_Strict):
    min_completed: int = Field(1, ge=0)
    # Every completed reply names this weight version.
    version: str | None = None


class StepExpect(_Strict):
    status: int | None = None
    # Exactly these nodes fail, each as described; every other node succeeds.
    failed: dict[str, NodeFailure] | None = None
    elapsed_s: Bounds | None = None
    reply_contains: list[str] = []
    traffic: TrafficExpect = TrafficExpect()
    # The router answered without calling any node: its operations log gained no entry, and
    # every node's released tags and count of memory operations are as before the step.
    no_node_called: bool = False
    # After the step: the nodes the router shows stale (behind the fleet's weight version).
    stale: list[str] | None = None
    # After the step: each node's weight version, as the node itself says.
    versions: dict[str, str | None] = {}


class WaitFor(_Strict):
    """Before the step: poll the nodes until they report these released tags."""

    released_tags: dict[str, list[str]]
    within_s: float = Field(30, gt=0, le=300)


class Step(_Strict):
    model_config = ConfigDict(populate_by_name=True)

    faults: dict[str, list[str]] = {}
    clear_faults: bool = False
    # Before the step: start again the nodes of a local fleet that exited (a crash).
    restart_crashed: bool = False
    wait_for: WaitFor | None = None
    release: ControlCall | None = None
    resume: ControlCall | None = None
    flush: ControlCall | None = None
    pause: PauseCall | None = None
    continue_: RouterCall | None = Field(None, alias="continue")
    update: UpdateCall | None = None
    traffic: Traffic | None = None
    expect: StepExpect = StepExpect()

    @model_validator(mode="after")
    def _one_operation(self) -> Step:
        given = [name for name in OPERATIONS if self.call(name) is not None]
        if len(given) != 1:
            raise ValueError(f"a step has exactly one operation of {', '.join(OPERATIONS)}; "
                             f"got {', '.join(given) or 'none'}")
        if self.traffic is not None and self.expect.no_node_called:
            raise ValueError("expect.no_node_called applies to the router's fan-out routes")
        return self

    def call(self, operation: str) -> RouterCall | Traffic | None:
        value: RouterCall | Traffic | None = getattr(
            self, "continue_" if operation == "continue" else operation)
        return value

    @property
    def operation(self) -> str:
        return next(name for name in OPERATIONS if self.call(name) is not None)

    def describe(self) -> str:
        call = self.call(self.operation)
        if not isinstance(call, RouterCall):
            return self.operation
        parts = [self.operation]
        if isinstance(call, ControlCall):
            parts += [f"tags={','.join(call.tags)}"] if call.tags else []
            parts += [f"body_bytes={call.body_bytes}"] if call.body_bytes else []
        if isinstance(call, PauseCall):
            parts.append(f"mode={call.mode}")
        if isinstance(call, UpdateCall):
            parts.append(describe_checkpoint(call))
            parts += [f"version={call.version}"] if call.version is not None else []
        parts += [f"body={json.dumps(call.body)}"] if call.body else []
        query = call.query_string()
        return " ".join(parts) + (f" ?{query}" if query else "")


def describe_checkpoint(checkpoint: Checkpoint) -> str:
    if checkpoint.seed is not None:
        return f"seed={checkpoint.seed}"
    return "a bad file" if checkpoint.bad_file else f"model_path={checkpoint.model_path}"


class UnreachableNode(_Strict):
    """A node registered on the router for this scenario at a port nothing listens on."""

    name: str
    role: Role


class Final(_Strict):
    """Checked after the steps, once the faults are cleared, by asking each node."""

    released_tags: dict[str, list[str]] = {}
    down: list[str] = []
    # Each node's weight version, as the node itself says.
    versions: dict[str, str | None] = {}


class Scenario(_Strict):
    name: str
    description: str = ""
    faults: dict[str, list[str]] = {}
    unreachable_nodes: list[UnreachableNode] = []
    steps: list[Step] = Field(min_length=1)
    final: Final = Final()

    @model_validator(mode="before")
    @classmethod
    def _single_operation(cls, data: Any) -> Any:
        """`release:`/`resume:`/`flush:`/`traffic:` and `expect:` at the top level are a
        scenario of one step."""
        if not isinstance(data, dict):
            return data
        moved = {k: data[k] for k in (*OPERATIONS, "expect", "wait_for", "restart_crashed")
                 if k in data}
        if not moved:
            return data
        if "steps" in data:
            raise ValueError(f"give either steps or a single operation, not both "
                             f"({', '.join(moved)} next to steps)")
        rest = {k: v for k, v in data.items() if k not in moved}
        return {**rest, "steps": [moved]}


class ChaosFile(_Strict):
    fleet: FleetSpec = FleetSpec()
    scenarios: list[Scenario] = Field(min_length=1)


class ScenarioError(Exception):
    """A scenario file that cannot be used; the message names the file and the key."""


def _check_names(chaos: ChaosFile, source: str) -> None:
    fleet = {n.name for n in chaos.fleet.nodes}
    if len(fleet) != len(chaos.fleet.nodes):
        raise ScenarioError(f"{source}: fleet.nodes: node names must be unique")
    for i, scenario in enumerate(chaos.scenarios):
        names = fleet | {n.name for n in scenario.unreachable_nodes}
        where = f"{source}: scenarios.{i} ({scenario.name})"
        used: list[tuple[str, str]] = [(f"faults.{n}", n) for n in scenario.faults]
        used += [(f"final.released_tags.{n}", n) for n in scenario.final.released_tags]
        used += [(f"final.down.{n}", n) for n in scenario.final.down]
        used += [(f"final.versions.{n}", n) for n in scenario.final.versions]
        for j, step in enumerate(scenario.steps):
            used += [(f"steps.{j}.faults.{n}", n) for n in step.faults]
            used += [(f"steps.{j}.expect.failed.{n}", n) for n in step.expect.failed or {}]
            used += [(f"steps.{j}.expect.stale.{n}", n) for n in step.expect.stale or []]
            used += [(f"steps.{j}.expect.versions.{n}", n) for n in step.expect.versions]
            if step.wait_for:
                used += [(f"steps.{j}.wait_for.{n}", n) for n in step.wait_for.released_tags]
        for key, name in used:
            if name not in names:
                raise ScenarioError(f"{where}.{key}: no node named {name!r} "
                                    f"(known: {', '.join(sorted(names))})")
        rules = [(f"faults.{n}", r) for n, rs in scenario.faults.items() for r in rs]
        rules += [(f"steps.{j}.faults.{n}", r) for j, s in enumerate(scenario.steps)
                  for n, rs in s.faults.items() for r in rs]
        for key, rule in rules:
            try:
                parse_rule(rule)
            except FaultRuleError as exc:
                raise ScenarioError(f"{where}.{key}: {exc}") from None


def parse_scenarios(data: Any, source: str) -> ChaosFile:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping with `scenarios:` at the top level")
    try:
        chaos = ChaosFile.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {describe_validation_error(exc)}") from None
    _check_names(chaos, source)
    return chaos


def load_scenarios(path: Path) -> ChaosFile:
    return parse_scenarios(read_yaml(path, ScenarioError), str(path))
