"""The fleet under test: node names mapped to URLs, started here (`start_local`, through
`pdfleet up`'s launcher) or found behind `--router`; fault admin calls to each node, and the
reset between scenarios (faults cleared, crashed nodes restarted, fleet awake)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from rich.console import Console

from node.faults.rules import parse_rule
from pdfleet.chaos.scenario import (
    Checkpoint,
    ControlCall,
    FleetSpec,
    RouterCall,
    UnreachableNode,
    UpdateCall,
)
from pdfleet.launcher import Child, LaunchError, LocalFleet, launch_flags, ports_in_use
from pdfleet.ports import free_port
from pdfleet.vocabulary import Operation, Role
from router.config import FleetConfig, NodeSpec, RouterSettings
from router.registry import Health, NodeStatus
from router.routes.schemas import ClusterStatus
from router.security import admin_token_from_env

ADMIN_CALL_S = 10.0
# A pdfleet node's count of memory operations, by operation and outcome.
MEMORY_OPERATIONS = "pdfleet_node_memory_operations_total"
RESTART_READY_S = 120.0
POLL_S = 0.1
SAVE_WEIGHTS_S = 120.0
# The `pdfleet node` options that decide a model's weights, which a checkpoint must match.
MODEL_OPTIONS = ("model", "model_size", "layers", "width", "heads", "dtype", "seed")
# The weights and version every node starts with unless its launch options say otherwise.
BASE_SEED = 0
BASE_VERSION = "default"


class FleetUnavailable(Exception):
    """The fleet could not be started or reached (exit 2)."""


def _local_config(spec: FleetSpec) -> FleetConfig:
    """The fleet of the scenario file on free ports, every node with fault injection on."""
    settings = {"poll_interval_s": 0.5, "poll_timeout_s": 1.0, **spec.router,
                "host": "127.0.0.1", "port": free_port()}
    nodes = []
    for node in spec.nodes:
        launch = {"device": "cpu", "memory_backend": "cpu", **node.launch,
                  "enable_fault_injection": True}
        nodes.append(NodeSpec(
            url=f"http://127.0.0.1:{free_port()}", role=node.role, launch=launch,
            bootstrap_port=free_port() if node.role is Role.PREFILL else None))
    return FleetConfig(router=RouterSettings.model_validate(settings), nodes=nodes)


def start_local(spec: FleetSpec, console: Console, ready_timeout_s: float
                ) -> tuple[LocalFleet, dict[str, str], dict[str, Child]]:
    """Start the fleet; its router URL is `fleet.router_url`. FleetUnavailable on failure."""
    try:
        config = _local_config(spec)
    except ValueError as exc:
        raise FleetUnavailable(f"fleet.router: {exc}") from None
    problems = ports_in_use(config)
    if problems:
        raise FleetUnavailable("; ".join(problems))
    path = Path(tempfile.mkdtemp(prefix="pdfleet-chaos-")) / "fleet.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    fleet = LocalFleet(config, path, console)
    try:
        fleet.start(ready_timeout_s)
    except LaunchError as exc:
        fleet.stop()
        raise FleetUnavailable(f"{exc}\n(logs in {fleet.log_dir})") from None
    urls = {node.name: spec_node.url for node, spec_node in zip(spec.nodes, config.nodes,
                                                                  strict=True)}
    children = {node.name: child for node, child in zip(spec.nodes, fleet.nodes, strict=True)}
    return fleet, urls, children


@dataclass
class ControlReply:
    status: int
    body: Any
    elapsed_s: float


def admin_headers() -> dict[str, str]:
    token = admin_token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}


class Checkpoints:
    """Weights files of the fleet's model, written once per seed, as `pdfleet node
    --save-weights` writes them; and one file that is not a checkpoint."""

    def __init__(self, spec: FleetSpec) -> None:
        launch = spec.nodes[0].launch if spec.nodes else {}
        self._model = {k: v for k, v in launch.items() if k in MODEL_OPTIONS and k != "seed"}
        self.base_seed = int(launch.get("seed", BASE_SEED))
        self._folder = Path(tempfile.mkdtemp(prefix="pdfleet-checkpoints-"))
        self._written: dict[int, Path] = {}

    def path(self, checkpoint: Checkpoint) -> str:
        if checkpoint.model_path is not None:
            return checkpoint.model_path
        if checkpoint.bad_file:
            bad = self._folder / "not-a-checkpoint.safetensors"
            bad.write_bytes(b"\xff" * 64)
            return str(bad)
        assert checkpoint.seed is not None
        return str(self.seeded(checkpoint.seed))

    def seeded(self, seed: int) -> Path:
        path = self._written.get(seed)
        if path is None:
            path = self._folder / f"seed-{seed}.safetensors"
            flags = launch_flags({**self._model, "device": "cpu", "seed": seed})
            done = subprocess.run(
                [sys.executable, "-m", "pdfleet", "node", *flags, "--save-weights", str(path)],
                capture_output=True, text=True, timeout=SAVE_WEIGHTS_S)
            if done.returncode != 0:
                raise RuntimeError(f"writing the seed-{seed} checkpoint failed: "
                                   f"{done.stderr[-2000:]}")
            self._written[seed] = path
        return path


class Fleet:
    def __init__(self, router_url: str, urls: dict[str, str], session: aiohttp.ClientSession,
                 children: dict[str, Child] | None = None,
                 checkpoints: Checkpoints | None = None) -> None:
        self.router_url = router_url.rstrip("/")
        self.urls = dict(urls)
        self.session = session
        self._children = children or {}
        self._headers = admin_headers()
        self.checkpoints = checkpoints or Checkpoints(FleetSpec())
        # What a scenario changed that the reset between scenarios must undo.
        self.paused = False
        self.weights_changed = False

    @classmethod
    async def connect(cls, router_url: str, spec: FleetSpec,
                      session: aiohttp.ClientSession,
                      checkpoints: Checkpoints | None = None) -> Fleet:
        """Name the router's nodes as the scenario file does. FleetUnavailable if the router
        cannot be reached or lacks a node the file names."""
        try:
            async with session.get(f"{router_url.rstrip('/')}/workers",
                                   timeout=aiohttp.ClientTimeout(total=ADMIN_CALL_S)) as resp:
                workers = (await resp.json())["workers"] if resp.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
            raise FleetUnavailable(f"router {router_url} unreachable: {exc!r}") from None
        if workers is None:
            raise FleetUnavailable(f"router {router_url}: GET /workers answered {resp.status}")
        free = {role: [w["url"] for w in workers if w["role"] == role] for role in Role}
        urls: dict[str, str] = {}
        for node in spec.nodes:
            url = node.url.rstrip("/") if node.url else (
                free[node.role].pop(0) if free[node.role] else None)
            if url is None:
                raise FleetUnavailable(
                    f"router {router_url} has no {node.role.value} node left for {node.name!r}")
            urls[node.name] = url
        return cls(router_url, urls, session, checkpoints=checkpoints)

    async def _call(self, method: str, url: str, payload: Any = None,
                    timeout_s: float = ADMIN_CALL_S, raw: bytes | None = None
                    ) -> tuple[int, Any]:
        """`payload` sent as JSON, or `raw` as a JSON body byte for byte."""
        headers = {**self._headers, **({"Content-Type": "application/json"} if raw else {})}
        async with self.session.request(method, url, json=payload, data=raw, headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            text = await resp.text(errors="replace")
        try:
            return resp.status, json.loads(text) if text else None
        except ValueError:
            return resp.status, text

    async def add_faults(self, name: str, rules: list[str]) -> None:
        for rule in rules:
            status, body = await self._call("POST", f"{self.urls[name]}/_admin/faults",
                                            parse_rule(rule).spec())
            if status != 201:
                raise RuntimeError(f"{name}: adding fault {rule!r} answered {status}: {body}")

    async def clear_faults(self) -> list[str]:
        """Delete every node's rules; the problems met (a node down is not one)."""
        problems = []
        for name, url in self.urls.items():
            try:
                status, body = await self._call("DELETE", f"{url}/_admin/faults")
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
            if status != 200:
                problems.append(f"{name}: DELETE /_admin/faults answered {status}: {body}")
        return problems

    async def released_tags(self, name: str) -> list[str] | None:
        """The node's own released tags; None when it cannot be reached."""
        try:
            status, body = await self._call("GET", f"{self.urls[name]}/is_sleeping")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"{name}: GET /is_sleeping answered {status}: {body}")
        tags = body.get("released_tags")
        if tags is None:  # vLLM: one flag, weights and KV cache sleep together
            tags = ["kv_cache", "weights"] if body.get("is_sleeping") else []
        return sorted(tags)

    async def _maybe_asleep(self, name: str) -> bool:
        """True unless the node says it is awake (one without /is_sleeping may be asleep)."""
        try:
            return bool(await self.released_tags(name))
        except RuntimeError:
            return True

    async def add_unreachable(self, node: UnreachableNode) -> None:
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there once the probe closes
        status, body = await self._call("POST", f"{self.router_url}/workers",
                                        {"url": url, "role": node.role.value})
        if status != 201:
            raise RuntimeError(f"registering {node.name} on the router answered {status}: {body}")
        self.urls[node.name] = url

    async def remove_unreachable(self, node: UnreachableNode) -> None:
        url = self.urls.pop(node.name, None)
        if url is not None:
            await self._call("DELETE", f"{self.router_url}/workers?url={url}")

    async def control(self, operation: str, call: RouterCall,
                      control_timeout_s: float) -> ControlReply:
        """`operation` (its short name) through the router's fan-out route."""
        query = call.query_string()
        kind = Operation.from_short(operation)
        url = f"{self.router_url}/{kind.value}" + (f"?{query}" if query else "")
        payload = call.payload()
        if isinstance(call, UpdateCall):
            payload = {"model_path": self.checkpoints.path(call), **payload}
            self.weights_changed = True
        if kind is Operation.PAUSE:
            self.paused = True
        size = call.body_bytes if isinstance(call, ControlCall) else None
        raw = json.dumps(payload).encode().ljust(size or 0)
        timeout = call.query.get("timeout")
        wait_s = (float(timeout) if isinstance(timeout, int | float | str) else
                  control_timeout_s) + 30
        started = time.monotonic()
        status, body = await self._call("POST", url, timeout_s=wait_s, raw=raw)
        return ControlReply(status, body, time.monotonic() - started)

    async def call_trace(self) -> dict[str, Any]:
        """What calling a node leaves behind: the router's newest operation, and per node
        its released tags and count of memory operations (None where it does not say)."""
        status, body = await self._call("GET", f"{self.router_url}/cluster/operations")
        if status != 200:
            raise RuntimeError(f"GET /cluster/operations answered {status}: {body}")
        newest = body["operations"][0]["request_id"] if body["operations"] else None
        trace: dict[str, Any] = {"the router's newest operation": newest}
        for name, url in self.urls.items():
            trace[name] = {"released_tags": await self.released_tags(name),
                           "memory operations": await self._memory_operations(url)}
        return trace

    async def _memory_operations(self, url: str) -> float | None:
        try:
            status, body = await self._call("GET", f"{url}/metrics")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if status != 200 or not isinstance(body, str):
            return None
        return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                   if line.startswith(f"{MEMORY_OPERATIONS}{{"))

    async def restart_crashed(self) -> list[str]:
        """Restart every node this harness launched that has exited; their names."""
        restarted = []
        for name, child in self._children.items():
            if child.exit_code() is None:
                continue
            child.start()
            deadline = time.monotonic() + RESTART_READY_S
            while not await asyncio.to_thread(child.answers_health):
                if child.exit_code() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not come back after a restart:\n"
                                       f"{child.log_tail()}")
                await asyncio.sleep(POLL_S)
            restarted.append(name)
        return restarted

    async def weight_version(self, name: str) -> str | None:
        """The node's own weight version (None: it names none, or cannot be reached)."""
        try:
            status, body = await self._call("GET", f"{self.urls[name]}/get_weight_version")
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"{name}: GET /get_weight_version answered {status}: {body}")
        version = body.get("weight_version")
        return None if version is None else str(version)

    async def level(self, within_s: float) -> None:
        """Undo a scenario's refit: generation continued, every node back on the fleet's
        first weights and version (nodes already there are sent them again: a node that
        crashed mid-update may hold part of another checkpoint)."""
        if self.paused:
            reply = await self.control("continue", RouterCall(), within_s)
            if reply.status != 200:
                raise RuntimeError(f"continuing generation answered {reply.status}: "
                                   f"{reply.body}")
            self.paused = False
        if self.weights_changed:
            base = UpdateCall(seed=self.checkpoints.base_seed, version=BASE_VERSION,
                              query={"force": "true"})
            reply = await self.control("update", base, within_s)
            if reply.status != 200:
                raise RuntimeError(f"restoring the fleet's weights answered {reply.status}: "
                                   f"{reply.body}")
            self.weights_changed = False

    async def router_view(self) -> list[NodeStatus]:
        status, body = await self._call("GET", f"{self.router_url}/cluster/status")
        if status != 200:
            raise RuntimeError(f"GET /cluster/status answered {status}: {body}")
        return ClusterStatus.model_validate(body).nodes

    async def wake(self, within_s: float) -> None:
        """Resume every node and wait until the router sees each one up and awake."""
        asleep = [name for name in self.urls if await self._maybe_asleep(name)]
        if asleep:
            reply = await self.control("resume", ControlCall(), within_s)
            if reply.status != 200:
                raise RuntimeError(f"waking the fleet answered {reply.status}: {reply.body}")
        deadline = time.monotonic() + within_s
        wanted = set(self.urls.values())
        while True:
            view = await self.router_view()
            # "sleeping" may read "unknown" for nodes without status routes (plain SGLang).
            lagging = [n.server for n in view if n.server in wanted
                       and (n.health is not Health.UP or n.sleeping is True)]
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not up and awake in the router's view after {within_s} s: "
                                   f"{', '.join(lagging)}")
            await asyncio.sleep(POLL_S)
