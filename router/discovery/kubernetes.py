"""Kubernetes discovery: each role's pods, by label selector, kept in the fleet.

Per role, one loop: list the pods (a full picture, reconciled into the fleet), then watch
from the list's `resourceVersion` (each event applied as it comes). The watch ends in a new
list when the history it asks for is gone (410 Gone: a watch event of type ERROR with that
code, or the reply's status), when it is cut or fails, and every `resync_s` in any case, so
an event the stream lost is caught by the next list. API errors are counted, shown in
`/cluster/status` and `/metrics`, and waited out with a growing pause; they never stop the
router.

The router reads pods only: `VERBS` is every API verb used here, and the Role shipped in
deploy/kubernetes grants exactly these (a test holds them equal).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx2
from lightkube import AsyncClient, ConfigError, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from pdfleet.vocabulary import Role
from router.config import KubernetesDiscovery
from router.discovery.membership import DiscoveredFleet
from router.discovery.pods import PodNode, PodRejected, pod_name, pod_node
from router.discovery.selectors import LabelSelector
from router.discovery.status import (
    WATCH_TRANSITIONS,
    DiscoveryStatus,
    RoleWatchStatus,
    WatchState,
)

log = logging.getLogger("router.discovery")

# The API verbs on pods this module uses: `list` (AsyncClient.list) and `watch`
# (AsyncClient.watch). Nothing here reads a single pod (`get`) or writes one, so the Role in
# deploy/kubernetes grants these two and no more.
VERBS = ("list", "watch")
BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # after consecutive API errors; the last repeats
DEFAULT_NAMESPACE = "default"
GONE = 410


class RoleWatch:
    """One role's list/watch loop and what it has seen."""

    def __init__(self, role: Role, selector: LabelSelector) -> None:
        self.role = role
        self.selector = selector
        self.state = WatchState.STARTING
        self.resource_version: str | None = None
        self.lists = 0
        self.events = 0
        self.errors = 0
        self.consecutive_errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.listed_at: float | None = None

    def enter(self, state: WatchState) -> None:
        if state not in WATCH_TRANSITIONS[self.state]:
            raise ValueError(f"{self.role} watch: {self.state} cannot become {state}")
        self.state = state


class KubernetesWatcher:
    def __init__(self, settings: KubernetesDiscovery, fleet: DiscoveredFleet,
                 on_error: Callable[[Role], None]) -> None:
        self._settings = settings
        self._fleet = fleet
        self._on_error = on_error
        self._watches = [RoleWatch(role, selector)
                         for role, selector in settings.selectors.by_role().items()]
        self._namespace: str | None = settings.namespace
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(w), name=f"discovery {w.role}")
                       for w in self._watches]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._fleet.stop()

    def status(self) -> DiscoveryStatus:
        return DiscoveryStatus(
            namespace=self._namespace,
            roles=[RoleWatchStatus(
                role=w.role, selector=w.selector.text, state=w.state,
                nodes=self._fleet.count(w.role), resource_version=w.resource_version,
                lists=w.lists, events=w.events, errors=w.errors, last_error=w.last_error,
                last_error_at=w.last_error_at, listed_at=w.listed_at) for w in self._watches],
            recent=list(self._fleet.events))

    def _client(self) -> AsyncClient:
        """A client per connection attempt: the service account's token file is re-read,
        as Kubernetes rotates it."""
        path = self._settings.kubeconfig
        config = KubeConfig.from_file(path) if path else KubeConfig.from_service_account()
        context = config.get()
        if context is None:
            raise ConfigError(f"kubeconfig {path} names no current context")
        self._namespace = self._settings.namespace or context.namespace or DEFAULT_NAMESPACE
        return AsyncClient(config=config, namespace=self._namespace)

    async def _run(self, watch: RoleWatch) -> None:
        while True:
            client: AsyncClient | None = None
            try:
                client = self._client()
                await self._list_then_watch(client, watch)
            except Exception as exc:  # whatever the config, the network or the API server did
                if _gone(exc):
                    log.info("%s watch: history gone (410), listing again", watch.role)
                else:
                    await self._failed(watch, _describe(exc))
            finally:
                if client is not None:
                    await client.close()

    async def _list_then_watch(self, client: AsyncClient, watch: RoleWatch) -> None:
        """One list, then the watch from it, until `resync_s` passes (a normal return)."""
        namespace = self._namespace
        watch.enter(WatchState.LISTING)
        async with asyncio.timeout(self._settings.resync_s) as period:
            try:
                listing = client.list(Pod, namespace=namespace, labels=watch.selector.labels())
                pods = [pod async for pod in listing]
                watch.resource_version = listing.resourceVersion
                watch.lists += 1
                watch.listed_at = time.time()
                watch.consecutive_errors = 0
                self._fleet.reconcile(watch.role, {pod_name(p): self._node(p, watch.role)
                                                   for p in pods})
                watch.enter(WatchState.WATCHING)
                async for event, pod in client.watch(
                        Pod, namespace=namespace, labels=watch.selector.labels(),
                        resource_version=watch.resource_version):
                    watch.events += 1
                    if pod.metadata is not None:
                        watch.resource_version = pod.metadata.resourceVersion
                    found = None if event == "DELETED" else self._node(pod, watch.role)
                    self._fleet.update(watch.role, pod_name(pod), found)
            except TimeoutError:
                if not period.expired():
                    raise

    def _node(self, pod: Pod, role: Role) -> PodNode | None:
        try:
            return pod_node(pod, role, self._settings)
        except PodRejected as exc:
            self._fleet.rejected(pod_name(pod), str(exc))
            return None

    async def _failed(self, watch: RoleWatch, error: str) -> None:
        watch.errors += 1
        watch.last_error = error
        watch.last_error_at = time.time()
        self._on_error(watch.role)
        pause = BACKOFF_S[min(watch.consecutive_errors, len(BACKOFF_S) - 1)]
        watch.consecutive_errors += 1
        log.warning("%s discovery: %s; listing again in %.1f s", watch.role, error, pause)
        watch.enter(WatchState.BACKING_OFF)
        await asyncio.sleep(pause)


def _gone(exc: BaseException) -> bool:
    """The watch's resourceVersion is too old: an ERROR event carrying a Status of code 410
    (lightkube raises it as ApiError), or a 410 reply."""
    if isinstance(exc, ApiError):
        return exc.status.code == GONE
    return isinstance(exc, httpx2.HTTPStatusError) and exc.response.status_code == GONE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"API error {exc.status.code}: {exc.status.message}"
    if isinstance(exc, httpx2.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from the API server"
    return f"{type(exc).__name__}: {exc}"
