"""What a client is told when its generation request cannot be served, defined once.

Node failures name the node, its role and either the node's HTTP status with a capped
detail, or the transport error (refused, reset, timeout) — the same fields the control
fan-out reports. Before the reply starts they are the HTTP error's body (`{"detail": ...}`);
once a stream has started, they arrive as an SSE event `data: {"error": ...}`, which is how
OpenAI clients expect a stream to fail.
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
        return {"detail": self.detail}

    def sse_event(self) -> bytes:
        error = self.detail if isinstance(self.detail, dict) else {"message": self.detail}
        return b"data: " + orjson.dumps({"error": {**error, "code": self.status}}) + b"\n\n"


class NodeRefused(GenerationError):
    """The node refused the connection: the request never reached it, so it is safe to try
    another pair."""


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
