"""The node's Prometheus metrics, served at `GET /metrics`.

Counters and histograms are updated where things happen (generation requests by an ASGI
middleware, tokens by the generation service, memory operations by the memory routes and the
controller); region sizes, released tags and in-flight requests are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.admission import Admission
from node.errors import NodeError
from node.memory.backends.base import RegionState
from node.memory.controller import MemoryController
from node.memory.tags import ALL_TAGS, MemoryTag
from pdfleet.vocabulary import Operation

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GENERATION_ROUTES = frozenset(("/generate", "/v1/completions", "/v1/chat/completions"))
# A tag's release or resume: a KV pool in ms, large weights tens of seconds.
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
T = TypeVar("T")


class NodeStateCollector(Collector):
    """Region sizes by state, released tags and in-flight requests, read at scrape time."""

    def __init__(self, controller: MemoryController, admission: Admission) -> None:
        self._controller = controller
        self._admission = admission

    def collect(self) -> Iterator[Metric]:
        regions = GaugeMetricFamily(
            "pdfleet_node_region_bytes", "Bytes of each memory region, under its current state",
            labels=["tag", "state"])
        for tag, region in self._controller.backend.stats().regions.items():
            for state in RegionState:
                value = region.bytes if region.state is state else 0
                regions.add_metric([tag.value, state.value], value)
        released = GaugeMetricFamily(
            "pdfleet_node_released_tags", "1 while the tag is released", labels=["tag"])
        now_released = set(self._controller.released_tags)
        for tag in ALL_TAGS:
            released.add_metric([tag.value], float(tag in now_released))
        inflight = GaugeMetricFamily(
            "pdfleet_node_inflight_requests", "Generation requests admitted and not finished")
        inflight.add_metric([], len(self._admission.inflight))
        yield from (regions, released, inflight)


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "pdfleet_node_generate_requests_total", "Generation requests answered",
            ["route", "status"], registry=self.registry)
        self.tokens = Counter(
            "pdfleet_node_generated_tokens_total", "Tokens this node generated",
            registry=self.registry)
        self.operations = Counter(
            "pdfleet_node_memory_operations_total", "Memory operations by outcome "
            "(success, conflict: refused or drain timed out, failure: any other error)",
            ["operation", "outcome"], registry=self.registry)
        self.step_duration = Histogram(
            "pdfleet_node_memory_operation_duration_seconds",
            "Time to release or resume one tag's region", ["operation", "tag"],
            buckets=STEP_BUCKETS, registry=self.registry)

    def watch(self, controller: MemoryController, admission: Admission) -> None:
        """Read the memory regions, released tags and in-flight work at every scrape."""
        self.registry.register(NodeStateCollector(controller, admission))

    def tokens_generated(self, count: int) -> None:
        self.tokens.inc(count)

    def step_done(self, operation: Operation, tag: MemoryTag, seconds: float) -> None:
        self.step_duration.labels(operation.short, tag.value).observe(seconds)

    async def operation(self, operation: Operation, work: Awaitable[T]) -> T:
        """`work`'s result, counted under the operation's short name by how it ended."""
        name = operation.short
        try:
            result = await work
        except NodeError as error:
            outcome = "conflict" if error.status == 409 else "failure"
            self.operations.labels(name, outcome).inc()
            raise
        except Exception:
            self.operations.labels(name, "failure").inc()
            raise
        self.operations.labels(name, "success").inc()
        return result

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class GenerationCounting:
    """ASGI middleware counting generation requests by route and answered status."""

    def __init__(self, app: ASGIApp, metrics: NodeMetrics) -> None:
        self.app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_ROUTES:
            await self.app(scope, receive, send)
            return
        status = 500

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self._metrics.requests.labels(scope["path"], str(status)).inc()
