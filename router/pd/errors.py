"""What a client is told when its generation request cannot be served, defined once.

The shape is the one OpenAI clients read, `{"error": {"message": ..., "code": <status>}}`,
whether it is the body of an HTTP error or, once a stream has started, an SSE event
`data: {"error": ...}` (how OpenAI clients expect a stream to fail). A node failure adds
the same fields the control fan-out reports: the node (`server`, `role`) and either its
HTTP `status` with a capped `detail`, or the transport `error` (refused, reset, timeout).
"""

from __future__ import annotations

from typing import Any

import orjson

from router.registry import Node
from router.upstream import ConnectionRefused, NodeReply, NodeTimeout, TransportError


class GenerationError(Exception):
    def __init__(
        self, status: int, detail: str | dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers

    @property
    def message(self) -> str:
        return self.detail if isinstance(self.detail, str) else str(self.detail["message"])

    def body(self) -> dict[str, Any]:
        fields = self.detail if isinstance(self.detail, dict) else {"message": self.detail}
        return {"error": {**fields, "code": self.status}}

    def sse_event(self) -> bytes:
        return b"data: " + orjson.dumps(self.body()) + b"\n\n"


class NodeRefused(GenerationError):
    """The node refused the connection, or said it sleeps: the request never ran there, so
    it is safe to try another pair."""


def node_answered(node: Node, reply: NodeReply) -> GenerationError:
    """`node` answered with a non-2xx status."""
    role = node.role.value
    return GenerationError(reply.status, {
        "message": f"{role} node {node.url} answered HTTP {reply.status}",
        "server": node.url,
        "role": role,
        "status": reply.status,
        "detail": reply.text(),
    })


def node_asleep(node: Node, reply: NodeReply) -> NodeRefused:
    """`node` answered that it sleeps: it did not admit the request, so another pair may."""
    role = node.role.value
    return NodeRefused(503, {
        "message": f"{role} node {node.url} is sleeping",
        "server": node.url,
        "role": role,
        "status": reply.status,
        "detail": reply.text(),
    })


def node_unreachable(node: Node, exc: TransportError) -> GenerationError:
    """No complete answer came from `node`."""
    role = node.role.value
    kind = NodeRefused if isinstance(exc, ConnectionRefused) else GenerationError
    return kind(504 if isinstance(exc, NodeTimeout) else 502, {
        "message": f"{role} node {node.url} failed: {exc}",
        "server": node.url,
        "role": role,
        "error": str(exc),
    })


def reply_too_large(node: Node, limit: int) -> GenerationError:
    return GenerationError(502, {
        "message": f"{node.role.value} node {node.url} replied with more than {limit} bytes",
        "server": node.url,
        "role": node.role.value,
    })
