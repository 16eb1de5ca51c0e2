"""A fake Kubernetes API server for tests and benchmarks: the pods of any namespace, with the
list/watch protocol the real server speaks.

- `GET /api/v1/namespaces/{ns}/pods[?labelSelector=]`: a PodList whose
  `metadata.resourceVersion` is the store's version at the time of the list; selectors in
  Kubernetes' string form, equality and set-based.
- `...&watch=true[&resourceVersion=R][&timeoutSeconds=T]`: a chunked stream of JSON lines
  `{"type": ADDED|MODIFIED|DELETED, "object": pod}` for every change after R (all of the
  history kept, then live), as the watch cache sends them: a pod whose labels stop matching
  the selector is DELETED for that watch, one that starts matching is ADDED. R older than
  the history kept: the stream's only event is an ERROR carrying a Status of code 410
  ("Expired"), as the real server answers; with `gone_as_http` the reply is HTTP 410 instead.
- Requests must carry the kubeconfig's bearer token (else 401). Errors are `Status` objects
  with Content-Type exactly `application/json`.

The test drives it: `add_pod`, `set_ready`, `annotate`, `label`, `start_deleting`,
`delete_pod`; `cut_watches()` cuts every open watch in the middle of an event;
`end_watches()` ends them cleanly; `forget_history()` makes every resourceVersion seen so far
expire; `fail_next(n, status)` answers the next n requests with that error.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pdfleet.ports import free_port
from router.discovery.selectors import LabelSelector, SelectorError, parse_selector

JSON = "application/json"
TOKEN = "fake-service-account-token"  # what the kubeconfig gives; anything else is a 401
CUT = object()  # put on a watch's queue: cut the stream mid-event
END = object()  # put on a watch's queue: end the stream cleanly, as a server-side timeout does


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def status_reply(code: int, reason: str, message: str) -> web.Response:
    return web.Response(status=code, body=json.dumps(status_object(code, reason, message)),
                        headers={"Content-Type": JSON})


@dataclass
class Watch:
    namespace: str
    selector: LabelSelector | None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)

    def selects(self, pod: dict[str, Any] | None) -> bool:
        if pod is None or pod["metadata"]["namespace"] != self.namespace:
            return False
        return self.selector is None or self.selector.matches(pod["metadata"].get("labels", {}))

    def event_for(self, change: Change) -> dict[str, Any] | None:
        """The event this watch sees for `change`, if any."""
        was, now = self.selects(change.before), self.selects(change.after)
        if now:
            return {"type": "MODIFIED" if was else "ADDED", "object": change.after}
        if was:
            return {"type": "DELETED", "object": change.final}
        return None


@dataclass
class Change:
    """One write: the pod `before` and `after` it (None: absent); `final`, the pod as its
    last event shows it (a deleted pod at the version of its deletion)."""

    version: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    final: dict[str, Any]


class FakeApiServer:
    def __init__(self, gone_as_http: bool = False) -> None:
        self.gone_as_http = gone_as_http
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 1000
        self.history: list[Change] = []
        self.oldest_kept = self.version  # watches from before this version are gone
        self.watches: list[Watch] = []
        self.lists = 0
        self.listed_at: list[float] = []  # when each list was answered (perf_counter)
        self.watches_opened = 0
        self.requests: list[str] = []  # path?query of every request, in order
        self.verbs_seen: set[str] = set()  # the API verbs clients used: list, watch
        self._failures: list[int] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeApiServer:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._pods)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self.cut_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, namespace: str) -> dict[str, Any]:
        """A kubeconfig that points at this server, `namespace` the context's."""
        return {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                          "namespace": namespace}}],
                "users": [{"name": "fake", "user": {"token": TOKEN}}]}

    # --- what the tests do to pods -------------------------------------------------------

    def add_pod(self, name: str, labels: dict[str, str], *, namespace: str = "default",
                annotations: dict[str, str] | None = None, ready: bool = False,
                ip: str | None = "127.0.0.1", phase: str = "Running") -> dict[str, Any]:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                            "labels": dict(labels), "annotations": dict(annotations or {}),
                            "creationTimestamp": _now()},
               "spec": {"containers": [{"name": "engine", "image": "lmsysorg/sglang"}]},
               "status": {"phase": phase, "podIP": ip, "conditions": [
                   {"type": "Ready", "status": "True" if ready else "False"}]}}
        if ip is None:
            del pod["status"]["podIP"]
        return self._commit(None, pod)

    def set_ready(self, name: str, ready: bool, namespace: str = "default") -> dict[str, Any]:
        return self._change(name, namespace, lambda p: p["status"]["conditions"][0].update(
            status="True" if ready else "False"))

    def annotate(self, name: str, annotations: dict[str, str],
                 namespace: str = "default") -> dict[str, Any]:
        return self._change(name, namespace,
                            lambda p: p["metadata"]["annotations"].update(annotations))

    def label(self, name: str, labels: dict[str, str],
              namespace: str = "default") -> dict[str, Any]:
        return self._change(name, namespace, lambda p: p["metadata"]["labels"].update(labels))

    def start_deleting(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """What `kubectl delete pod` does first: the pod stays, terminating."""
        return self._change(name, namespace, lambda p: p["metadata"].update(
            deletionTimestamp=_now(), deletionGracePeriodSeconds=30))

    def delete_pod(self, name: str, namespace: str = "default") -> None:
        before = self.pods.pop((namespace, name))
        self.version += 1
        gone = copy.deepcopy(before)
        gone["metadata"]["resourceVersion"] = str(self.version)
        self._record(before, None, gone)

    def cut_watches(self) -> None:
        for watch in self.watches:
            watch.queue.put_nowait(CUT)

    def end_watches(self) -> None:
        """End every open watch cleanly; a client watches again from the last version it
        saw."""
        for watch in self.watches:
            watch.queue.put_nowait(END)

    def forget_history(self) -> None:
        """Compact: every version before now expires (a watch from it gets 410). Other
        objects move the cluster's version on meanwhile, so the version a list gives now is
        not the one a watch already had."""
        self.history.clear()
        self.version += 1
        self.oldest_kept = self.version

    def fail_next(self, count: int, status: int = 503) -> None:
        self._failures.extend([status] * count)

    # --- the store -------------------------------------------------------------------------

    def _change(self, name: str, namespace: str, edit: Any) -> dict[str, Any]:
        before = self.pods[(namespace, name)]
        after = copy.deepcopy(before)
        edit(after)
        return self._commit(before, after)

    def _commit(self, before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        after["metadata"]["resourceVersion"] = str(self.version)
        meta = after["metadata"]
        self.pods[(meta["namespace"], meta["name"])] = after
        self._record(before, after, after)
        return after

    def _record(self, before: dict[str, Any] | None, after: dict[str, Any] | None,
                final: dict[str, Any]) -> None:
        change = Change(self.version, before, after, final)
        self.history.append(change)
        for watch in self.watches:
            event = watch.event_for(change)
            if event is not None:
                watch.queue.put_nowait(event)

    # --- the API ---------------------------------------------------------------------------

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request.path_qs)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status_reply(401, "Unauthorized", "Unauthorized")
        if self._failures:
            code = self._failures.pop(0)
            return status_reply(code, "ServiceUnavailable" if code == 503 else "InternalError",
                                f"the fake API server was told to fail this request ({code})")
        namespace = request.match_info["namespace"]
        try:
            raw = request.query.get("labelSelector")
            selector = parse_selector(raw) if raw else None
        except SelectorError as exc:
            return status_reply(400, "BadRequest", f"unable to parse requirement: {exc}")
        if request.query.get("watch") in ("true", "1"):
            self.verbs_seen.add("watch")
            return await self._watch(request, Watch(namespace, selector))
        self.verbs_seen.add("list")
        return self._list(namespace, selector)

    def _list(self, namespace: str, selector: LabelSelector | None) -> web.Response:
        self.lists += 1
        self.listed_at.append(time.perf_counter())
        watch = Watch(namespace, selector)
        items = [pod for pod in self.pods.values() if watch.selects(pod)]
        body = {"kind": "PodList", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.version)}, "items": items}
        return web.Response(body=json.dumps(body), headers={"Content-Type": JSON})

    async def _watch(self, request: web.Request, watch: Watch) -> web.StreamResponse:
        raw_version = request.query.get("resourceVersion")
        try:
            since = int(raw_version) if raw_version not in (None, "", "0") else None
        except ValueError:
            return status_reply(400, "BadRequest", f"invalid resourceVersion {raw_version!r}")
        if since is not None and since < self.oldest_kept:
            message = f"too old resource version: {since} ({self.oldest_kept})"
            if self.gone_as_http:
                return status_reply(410, "Expired", message)
            return await self._stream(request, [{"type": "ERROR",
                                                 "object": status_object(410, "Expired",
                                                                         message)}], None)
        backlog: list[dict[str, Any]] = []
        if since is None:  # no version: the current state as ADDED events, then changes
            backlog = [{"type": "ADDED", "object": p} for p in self.pods.values()
                       if watch.selects(p)]
        else:
            for change in self.history:
                if change.version > since:
                    event = watch.event_for(change)
                    if event is not None:
                        backlog.append(event)
        timeout = request.query.get("timeoutSeconds")
        return await self._stream(request, backlog, watch, float(timeout) if timeout else None)

    async def _stream(self, request: web.Request, backlog: list[dict[str, Any]],
                      watch: Watch | None, timeout_s: float | None = None) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": JSON})
        reply.enable_chunked_encoding()
        await reply.prepare(request)
        self.watches_opened += 1
        for event in backlog:
            await reply.write(json.dumps(event).encode() + b"\n")
        if watch is None:
            await reply.write_eof()
            return reply
        self.watches.append(watch)
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    event = await watch.queue.get()
                    if event is END:
                        await reply.write_eof()
                        return reply
                    if event is CUT:
                        await reply.write(b'{"type": "MODIFIED", "object": {"kind": "Po')
                        assert request.transport is not None
                        request.transport.abort()
                        return reply
                    await reply.write(json.dumps(event).encode() + b"\n")
        except TimeoutError:
            await reply.write_eof()
            return reply
        except ConnectionError:  # the client went away
            return reply
        finally:
            self.watches.remove(watch)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
