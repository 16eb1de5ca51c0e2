"""The router's Prometheus metrics, served at `GET /metrics`.

Two sources:
- Counters and histograms the router updates as requests and control operations end. With
  PROMETHEUS_MULTIPROC_DIR set (several router processes on one port) prometheus_client keeps
  them in per-process files and a scrape of any process sums them all.
- The fleet's state (`pdfleet_node_*`), read from the `FleetRegistry` at scrape time by
  `FleetCollector`: a removed worker has no series because it is no longer in the registry,
  and every process, holding the same fleet, shows the same series.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdfleet.vocabulary import MEMORY_TAGS
from router.control.report import ControlReport
from router.discovery.status import DiscoveryStatus, WatchState
from router.registry import FleetRegistry, Health

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Generation: a few ms (errors, cached) to minutes (long generations).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Control: a flush takes ms, a release of large weights tens of seconds.
CONTROL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class FleetCollector(Collector):
    """Each node's state as the registry holds it at scrape time."""

    def __init__(self, registry: FleetRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "pdfleet_node_up", "1 when the node answered its last poll or operation",
            labels=["node", "role"])
        sleeping = GaugeMetricFamily(
            "pdfleet_node_sleeping", "1 when the node has released any memory tag",
            labels=["node", "role"])
        released = GaugeMetricFamily(
            "pdfleet_node_released", "1 when the node has released this memory tag",
            labels=["node", "tag"])
        used = GaugeMetricFamily(
            "pdfleet_node_memory_used_bytes", "Memory in use as the node last reported it",
            labels=["node"])
        total = GaugeMetricFamily(
            "pdfleet_node_memory_total_bytes", "Memory of the node's device (or host)",
            labels=["node"])
        outstanding = GaugeMetricFamily(
            "pdfleet_node_outstanding_requests",
            "Generation requests this router has in flight on the node", labels=["node"])
        version_info = GaugeMetricFamily(
            "pdfleet_node_weight_version_info",
            "1 for the weight version the node serves, where it is known",
            labels=["node", "version"])
        stale = GaugeMetricFamily(
            "pdfleet_node_stale", "1 when the node is not at the fleet's weight version",
            labels=["node", "role"])
        fleet_version = self._registry.weight_version
        served: set[str] = set()
        info = GaugeMetricFamily(
            "pdfleet_node_info", "1 per node: where it came from (static or kubernetes), its "
            "pod when discovered, and its membership phase",
            labels=["node", "role", "engine", "source", "pod", "phase"])
        for node in self._registry.all():
            role = node.role.value
            info.add_metric([node.url, role, node.engine, node.source, node.pod or "",
                             node.phase], 1.0)
            up.add_metric([node.url, role], float(node.health is Health.UP))
            sleeping.add_metric([node.url, role], float(node.sleeping))
            for tag in MEMORY_TAGS:
                released.add_metric([node.url, tag], float(tag in node.released_tags))
            memory = node.memory or {}
            if isinstance(memory.get("used_bytes"), int):
                used.add_metric([node.url], memory["used_bytes"])
            if isinstance(memory.get("total_bytes"), int):
                total.add_metric([node.url], memory["total_bytes"])
            outstanding.add_metric([node.url], node.outstanding)
            stale.add_metric([node.url, role], float(not self._registry.current(node)))
            if node.weight_version_known and node.weight_version is not None:
                version_info.add_metric([node.url, node.weight_version], 1)
                if node.routable:
                    served.add(node.weight_version)
        versions = GaugeMetricFamily(
            "pdfleet_fleet_weight_versions",
            "Distinct weight versions among the routable nodes: above 1 during a refit, or "
            "after an update that failed on some nodes")
        versions.add_metric([], len(served))
        fleet = GaugeMetricFamily(
            "pdfleet_fleet_weight_version_info", "1 for the fleet's weight version, if any",
            labels=["version"])
        if fleet_version is not None:
            fleet.add_metric([fleet_version], 1)
        yield from (up, sleeping, released, used, total, outstanding, version_info, stale,
                    versions, fleet, info)


class DiscoveryCollector(Collector):
    """Each discovery watch's state at scrape time: 1 on the state it is in."""

    def __init__(self, status: Callable[[], DiscoveryStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "pdfleet_discovery_state", "1 on the state each role's pod watch is in",
            labels=["source", "role", "state"])
        nodes = GaugeMetricFamily(
            "pdfleet_discovery_nodes", "Discovered pods in the fleet now",
            labels=["source", "role"])
        status = self._status()
        for watch in status.roles:
            for name in WatchState:
                state.add_metric([status.source, watch.role, name], float(watch.state is name))
            nodes.add_metric([status.source, watch.role], watch.nodes)
        yield from (state, nodes)


class RouterMetrics:
    def __init__(self, fleet: FleetRegistry) -> None:
        self._multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self._own = CollectorRegistry()
        self._fleet = FleetCollector(fleet)
        self._own.register(self._fleet)
        self._discovery: DiscoveryCollector | None = None
        self.requests = Counter(
            "pdfleet_router_requests_total", "HTTP requests the router answered",
            ["route", "status"], registry=self._own)
        self.request_duration = Histogram(
            "pdfleet_router_request_duration_seconds", "Time to answer a request (to the "
            "end of the body for streams)", ["route"], buckets=REQUEST_BUCKETS,
            registry=self._own)
        self.operations = Counter(
            "pdfleet_control_operations_total", "Cluster control operations by outcome",
            ["operation", "outcome"], registry=self._own)
        self.operation_duration = Histogram(
            "pdfleet_control_operation_duration_seconds",
            "Time from a control operation's start to its last node's reply", ["operation"],
            buckets=CONTROL_BUCKETS, registry=self._own)
        self.node_failures = Counter(
            "pdfleet_control_node_failures_total", "Nodes that failed a control operation",
            ["operation", "node", "kind"], registry=self._own)
        self.discovery_errors = Counter(
            "pdfleet_discovery_errors_total", "Errors of node discovery (API server "
            "unreachable or refusing, a watch cut), each followed by a new list",
            ["source", "role"], registry=self._own)
        # Label children resolved once per (route, status): the generation path pays only
        # for an increment and an observation.
        self._request_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def watch_discovery(self, status: Callable[[], DiscoveryStatus]) -> None:
        """Show discovery's state, read at scrape time; one process's view is every
        process's, as with the fleet."""
        self._discovery = DiscoveryCollector(status)
        self._own.register(self._discovery)

    def request_done(self, route: str, status: int, seconds: float) -> None:
        children = self._request_children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)),
                        self.request_duration.labels(route))
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    async def control_done(self, report: ControlReport) -> None:
        self.operations.labels(report.operation, report.outcome).inc()
        self.operation_duration.labels(report.operation).observe(report.elapsed_ms / 1000)
        for failure in report.failures:
            self.node_failures.labels(report.operation, failure.server, failure.kind).inc()

    def exposition(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self._own)
        scrape = CollectorRegistry()
        MultiProcessCollector(scrape, path=self._multiprocess_dir)
        scrape.register(self._fleet)
        if self._discovery is not None:
            scrape.register(self._discovery)
        return generate_latest(scrape)


class RequestCounting:
    """ASGI middleware counting the requests it sees in `pdfleet_router_requests_total`.

    It sees every route but the generation routes, which `router.serving` answers (and
    counts) before ASGI. The route label is the matched route's path template; requests
    that match no route share `other`, so that scanners cannot grow the series without bound.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what Starlette answers when the app raises

        async def counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            metrics: RouterMetrics = scope["app"].state.router.metrics
            metrics.request_done(route, status, time.perf_counter() - started)
