"""One generation request end to end: place it, call prefill and decode at once, answer
with decode's reply or a clear error.

This is the router's hot path, benchmarked against Rust routers, so it stays lean: the body
is parsed once by the caller and dumped once here, nothing is logged per request, and the
only per-request objects are the two node calls.

Retries (`PLACEMENT_RETRY`): a node that refuses the connection never saw the request, and
a node whose 503 says it sleeps (another router, or an operator, put it to sleep) did not
admit it; either way (`NodeRefused`) the request goes to another pair (the node is marked down
or asleep and so is not placed again), at most `MAX_PLACEMENTS` pairs in all, at once. Any
other failure may have reached a node and is reported, not retried. A retry is placed by the
same rule as the first try, weight versions included.

Every reply a node serves names the weights that served it (`WEIGHT_VERSION_HEADER`): the
node's own header when it sent one, else the version the registry knows of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from dataclasses import replace
from typing import Any, TypeVar

import orjson

from pdfleet.retry import RetryPolicy, retry
from pdfleet.vocabulary import Role
from router.config import RouterSettings
from router.http.client import call_node, start_call
from router.http.errors import NodeTimeout, TransportError
from router.http.pool import NodeClient
from router.http.reply import NodeReply, NodeStream
from router.pd.bootstrap import add_bootstrap
from router.pd.errors import (
    GenerationError,
    NodeAnswered,
    NodeAsleep,
    NodeRefused,
    NodeUnreachable,
    ReplyTooLarge,
)
from router.pd.placement import ClusterSleeping, NoRoute, Placement, Placer
from router.pd.stream import DecodeStream, served_version
from router.registry import FleetRegistry, Health, Node

R = TypeVar("R")

MAX_PLACEMENTS = 3
PLACEMENT_RETRY = RetryPolicy(on=(NodeRefused,), attempts=MAX_PLACEMENTS)
PREFILL_REPLY_BYTES = 64 << 10  # prefill's own reply is not relayed; read it only to finish
JSON_HEADERS = {"Content-Type": "application/json"}
MODEL_ASKING_ORDER = (Role.DECODE, Role.MIXED, Role.PREFILL)


class GenerationProxy:
    def __init__(
        self, registry: FleetRegistry, session: NodeClient, settings: RouterSettings
    ) -> None:
        self._registry = registry
        self._session = session
        self._placer = Placer(registry, settings.policy, settings.version_policy)
        self._timeout_s = settings.request_timeout_s
        self._reply_bytes = settings.max_body_bytes
        self._detail_bytes = settings.error_detail_bytes
        # The router learns that a node woke at once (wake through it) or at the next poll.
        self._retry_after = {"Retry-After": str(max(1, math.ceil(settings.poll_interval_s)))}
        self._finishing: set[asyncio.Future[NodeReply | NodeStream]] = set()

    async def generate(
        self, path: str, payload: dict[str, Any], raw: bytes, stream: bool
    ) -> NodeReply | DecodeStream:
        """Serve one request to `path`; `payload` is `raw` parsed. Streams come back as a
        `DecodeStream` the caller relays and closes; everything else as decode's reply."""
        deadline = self._deadline()
        refusals: list[NodeRefused] = []  # the last one explains a placement that fails

        async def on_a_pair() -> NodeReply | DecodeStream:
            placement = self._place(refusals[-1] if refusals else None)
            body = raw
            if placement.prefill is not None:
                add_bootstrap(path, payload, placement.prefill)
                body = orjson.dumps(payload)
            try:
                if stream:
                    return await self._open_stream(placement, path, body, deadline)
                return await self._exchange(placement, path, body, deadline)
            except NodeRefused as exc:
                refusals.append(exc)
                raise

        return await retry(on_a_pair, PLACEMENT_RETRY)

    async def models(self) -> NodeReply:
        """`GET /v1/models` from the first node that answers; sleeping nodes still know
        their model."""
        nodes = sorted(
            (n for n in self._registry.all() if n.health is not Health.DOWN),
            key=lambda n: MODEL_ASKING_ORDER.index(n.role),
        )
        failure: GenerationError | None = None
        for node in nodes[:MAX_PLACEMENTS]:
            try:
                return await call_node(
                    self._session, "GET", f"{node.url}/v1/models", deadline=self._deadline(),
                    max_body=self._reply_bytes, max_error_body=self._detail_bytes,
                    retry_refused=False,
                )
            except TransportError as exc:
                failure = self._failed(node, exc)
        if failure is not None:
            raise failure
        raise GenerationError(503, str(self._placer.why_not()), self._retry_after)

    def _place(self, refused: NodeRefused | None) -> Placement:
        try:
            return self._placer.place()
        except NoRoute as exc:
            message = str(exc)
            if refused is not None and not isinstance(exc, ClusterSleeping):
                message += f"; last failure: {refused.message}"
            raise GenerationError(503, message, self._retry_after) from None

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._timeout_s

    def _failed(self, node: Node, exc: TransportError) -> NodeUnreachable:
        if not isinstance(exc, NodeTimeout):  # slow is not down
            self._registry.mark_down(node, str(exc))
        return NodeUnreachable.of(node, exc)

    def _start(self, node: Node, path: str, body: bytes, deadline: float, max_body: int,
               streaming: bool = False) -> asyncio.Future[NodeReply | NodeStream]:
        """Send the request to `node` now. The node counts it as outstanding from now on —
        before the next request is placed, which least_outstanding relies on — until the
        call ends, however it ends."""
        node.outstanding += 1
        call = start_call(
            self._session, "POST", node.url + path, deadline=deadline, body=body,
            headers=JSON_HEADERS, max_body=max_body, max_error_body=self._detail_bytes,
            streaming=streaming)
        call.add_done_callback(lambda _: _release(node))
        return call

    def _outcome(self, node: Node, call: asyncio.Future[R]) -> R:
        """The ended `call`'s result, or the error the client is told."""
        try:
            return call.result()
        except TransportError as exc:
            raise self._failed(node, exc) from None

    def _decode_reply(self, node: Node, reply: NodeReply) -> NodeReply:
        """Decode's 2xx reply; any other becomes the client's error, in the same shape as a
        prefill node's (a request both refuse reads the same whichever answered first)."""
        if reply.ok:
            if reply.truncated:
                raise ReplyTooLarge(node, self._reply_bytes)
            version = served_version(reply.weight_version, node)
            return reply if version is reply.weight_version else replace(
                reply, weight_version=version)
        if reply.node_sleeping:
            raise self._asleep(node, reply)
        raise NodeAnswered(node, reply)

    def _check_prefill(self, node: Node, call: asyncio.Future[NodeReply | NodeStream]) -> None:
        """Raise the client's error if the ended prefill `call` failed."""
        reply = self._outcome(node, call)
        assert isinstance(reply, NodeReply)
        if reply.node_sleeping:
            raise self._asleep(node, reply)
        if not reply.ok:
            raise NodeAnswered(node, reply)

    def _asleep(self, node: Node, reply: NodeReply) -> NodeAsleep:
        """`node` said it sleeps: no request goes there until a poll or a wake says otherwise."""
        self._registry.mark_asleep(node)
        return NodeAsleep(node, reply)

    async def _exchange(
        self, placement: Placement, path: str, body: bytes, deadline: float
    ) -> NodeReply:
        """Non-streaming: decode's reply once both nodes are done; a prefill failure ends
        the request as soon as it is known."""
        decode_node, prefill_node = placement.decode, placement.prefill
        decode = self._start(decode_node, path, body, deadline, self._reply_bytes)
        prefill = None
        try:
            if prefill_node is not None:
                prefill = self._start(prefill_node, path, body, deadline, PREFILL_REPLY_BYTES)
                await _either(prefill, decode)
                if prefill.done():
                    self._check_prefill(prefill_node, prefill)
            await _ended(decode)
            reply = self._outcome(decode_node, decode)
            assert isinstance(reply, NodeReply)
            if reply.ok and prefill is not None and prefill_node is not None:
                await _ended(prefill)
                self._check_prefill(prefill_node, prefill)
            return self._decode_reply(decode_node, reply)
        finally:
            _settle(prefill)
            _settle(decode)

    async def _open_stream(
        self, placement: Placement, path: str, body: bytes, deadline: float
    ) -> NodeReply | DecodeStream:
        """Streaming: decode's stream as soon as its headers arrive, with prefill watched
        from the side; a prefill failure before then is the request's error."""
        decode_node, prefill_node = placement.decode, placement.prefill
        opening = self._start(decode_node, path, body, deadline, 0, streaming=True)
        prefill = None
        try:
            if prefill_node is not None:
                prefill = self._start(prefill_node, path, body, deadline, PREFILL_REPLY_BYTES)
                await _either(prefill, opening)
                if prefill.done():
                    self._check_prefill(prefill_node, prefill)
            await _ended(opening)
            opened = self._outcome(decode_node, opening)
        except BaseException:
            _settle(prefill)
            _abandon(opening)
            raise
        if isinstance(opened, NodeReply):  # decode answered with an error status
            _settle(prefill)
            return self._decode_reply(decode_node, opened)
        decoded = DecodeStream(decode_node, opened, self._failed,
                               served_version(opened.weight_version, decode_node))
        if prefill is not None and prefill_node is not None:
            decoded.watch_prefill(
                prefill, lambda call: self._check_prefill(prefill_node, call), self._finish)
        return decoded

    def _finish(self, prefill: asyncio.Future[NodeReply | NodeStream]) -> None:
        """Keep a prefill call that outlived its stream until it ends on its own."""
        self._finishing.add(prefill)
        prefill.add_done_callback(self._finishing.discard)


async def _either(a: asyncio.Future[Any], b: asyncio.Future[Any]) -> None:
    """Wait until `a` or `b` has ended: `asyncio.wait(FIRST_COMPLETED)` for two futures,
    without its sets and per-call checks (every PD request waits on one)."""
    if a.done() or b.done():
        return
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    a.add_done_callback(wake)
    b.add_done_callback(wake)
    try:
        await waiter
    finally:
        a.remove_done_callback(wake)
        b.remove_done_callback(wake)


async def _ended(call: asyncio.Future[Any]) -> None:
    """Wait for `call` to end; its outcome is read after."""
    with contextlib.suppress(TransportError):
        await call


def _release(node: Node) -> None:
    node.outstanding -= 1


def _settle(task: asyncio.Future[Any] | None) -> None:
    """Cancel `task` if it still runs; otherwise mark its outcome as seen."""
    if task is None:
        return
    if not task.done():
        task.cancel()
    elif not task.cancelled():
        task.exception()


def _abandon(opening: asyncio.Future[NodeReply | NodeStream]) -> None:
    """Give up on a decode call that may already have produced a stream."""
    if opening.done() and not opening.cancelled() and opening.exception() is None:
        opened = opening.result()
        if isinstance(opened, NodeStream):
            opened.close()
    else:
        _settle(opening)
