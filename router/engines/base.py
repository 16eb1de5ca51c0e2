"""What the router asks of a node's engine, whatever its HTTP API.

An engine adapter turns one control operation (release, resume, flush; pause, continue,
weight updates; any route through /fanout) into that engine's own node call(s), answered
as a `NodeOutcome` (router/control/outcome.py), and one status probe into what the registry
records. Every call goes through `router.http.client.call_node`, so deadlines and capped
reads are the same for every engine, and a `TransportError` from it is the same
`TransportFailed` outcome whichever engine met it.
Adding an engine is one module with one `Engine` subclass, listed in `router/engines/__init__.py`.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from pdfleet.vocabulary import WEIGHT_UPDATES, EngineName, Operation
from router.control.outcome import Answered, NodeOutcome, TransportFailed
from router.http.client import call_node
from router.http.errors import TransportError
from router.http.pool import NodeClient
from router.http.reply import NodeReply

RESULT_MAX_BYTES = 64 << 10
PROBE_MAX_BYTES = 256 << 10


@dataclass(frozen=True, slots=True)
class ControlCall:
    """One control operation for one node, in the router's (SGLang's) terms."""

    operation: Operation
    body: bytes  # the SGLang-shaped body, sent verbatim where the engine speaks SGLang
    headers: dict[str, str]  # X-Request-Id, and the caller's Content-Type / Authorization
    tags: list[str] | None  # None: every tag
    level: int  # vLLM's sleep level (1: weights kept in host memory; 2: discarded)
    mode: str | None  # "abort" | "wait": what a release does with in-flight requests
    deadline: float  # event-loop time
    released_tags: frozenset[str]  # what the node had released before this call
    pause_mode: str | None = None  # a pause, in SGLang's words: abort|retract|in_place|wait
    query: str = ""  # for vLLM's /pause and any /fanout path
    path: str | None = None  # /fanout's node route
    model_path: str | None = None  # update from disk: the checkpoint
    weight_version: str | None = None  # a weight update: the version it sets, if named

    @property
    def route(self) -> str:
        """The node route of SGLang's API that carries the operation (with its query)."""
        if self.operation is Operation.FANOUT:
            return f"/{self.path}" + (f"?{self.query}" if self.query else "")
        return f"/{self.operation}"


@dataclass(frozen=True, slots=True)
class Probe:
    """One status poll of a node."""

    reachable: bool
    released_tags: list[str] | None = None
    memory: dict[str, Any] | None = None
    inflight: int | None = None
    error: str | None = None
    # The weights it serves where it said (`weight_version_known`): a string, or None when
    # it names none.
    weight_version: str | None = None
    weight_version_known: bool = False


def names_weight_version(reply: dict[str, Any] | None) -> bool:
    """Whether a node's status `reply` names the weights it serves: `weight_version` a string,
    or null for none."""
    return reply is not None and "weight_version" in reply and (
        reply["weight_version"] is None or isinstance(reply["weight_version"], str))


def json_value(reply: NodeReply) -> Any:
    """The reply's JSON, or None when it is empty, cut short or not JSON."""
    if not reply.body or reply.truncated:
        return None
    try:
        return json.loads(reply.body)
    except ValueError:
        return None


def error_message(reply: NodeReply) -> str:
    """An error reply's `{"error": {"message": m}}` (SGLang's and vLLM's shape) as `m`; any
    other body as its (capped) text."""
    value = json_value(reply)
    if isinstance(value, dict) and isinstance(value.get("error"), dict):
        message = value["error"].get("message")
        if isinstance(message, str):
            return message
    return reply.text()


def error_answer(reply: NodeReply) -> Answered:
    """A non-2xx reply as the node's answer."""
    return Answered(status=reply.status, elapsed_ms=round(reply.elapsed_ms, 2),
                    detail=error_message(reply))


def weight_version_after(call: ControlCall, result: Any) -> str | None:
    """The weights a node serves after `call` succeeded: what its reply says (pdfleet nodes
    do), else what the update named (vLLM never says one; SGLang says none); None when the
    call was no weight update or named no version."""
    if call.operation not in WEIGHT_UPDATES:
        return None
    if isinstance(result, dict) and isinstance(result.get("weight_version"), str):
        return result["weight_version"]
    return call.weight_version


def json_object(reply: NodeReply | BaseException) -> dict[str, Any] | None:
    if isinstance(reply, BaseException) or not reply.ok:
        return None
    value = json_value(reply)
    return value if isinstance(value, dict) else None


class Engine(ABC):
    """One engine's HTTP API."""

    name: ClassVar[EngineName]

    def __init__(self, session: NodeClient, error_detail_bytes: int) -> None:
        self._session = session
        self._error_detail_bytes = error_detail_bytes

    async def control(self, url: str, call: ControlCall) -> NodeOutcome:
        """Do `call` on the node at `url`."""
        started = time.perf_counter()
        try:
            return await self._control(url, call)
        except TransportError as exc:
            elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
            return TransportFailed(error=str(exc), kind=exc.kind, elapsed_ms=elapsed_ms)

    @abstractmethod
    async def _control(self, url: str, call: ControlCall) -> NodeOutcome:
        """Do `call` on the node at `url`; a `TransportError` is left to `control`."""

    @abstractmethod
    async def probe(self, url: str, deadline: float,
                    released_tags: frozenset[str]) -> Probe:
        """Poll the node at `url`, which the router believes has `released_tags` released."""

    async def post(self, url: str, call: ControlCall, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> NodeReply:
        return await call_node(
            self._session, "POST", url, deadline=call.deadline, body=body,
            headers=call.headers if headers is None else headers,
            max_body=RESULT_MAX_BYTES, max_error_body=self._error_detail_bytes,
        )

    async def get(self, url: str, deadline: float) -> NodeReply:
        # No retry of a refused poll: the next poll is the retry.
        return await call_node(self._session, "GET", url, deadline=deadline,
                               max_body=PROBE_MAX_BYTES, retry_refused=False)

    async def health(self, url: str, deadline: float) -> Probe:
        """Reachability from `/health` alone, for nodes without status routes."""
        try:
            reply = await self.get(f"{url}/health", deadline)
        except TransportError as exc:
            return Probe(reachable=False, error=str(exc))
        if not reply.ok:
            return Probe(reachable=False, error=f"HTTP {reply.status} from /health")
        return Probe(reachable=True)

