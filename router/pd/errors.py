"""What a client is told when its generation request cannot be served, defined once.

The shape is the one OpenAI clients read, `{"error": {"message", "type", "code": <status>}}`,
whether it is the body of an HTTP error or, once a stream has started, an SSE event
`data: {"error": ...}` (how OpenAI clients expect a stream to fail). A node failure adds
the same fields the control fan-out reports: the node (`server`, `role`) and either its
HTTP `status` with a capped `detail`, or the transport `error` (refused, reset, timeout).
A node that refused the request lends it its own message and status (`node_message`), so a
request every node refuses reads the same whichever node answered first.

    GenerationError             the request itself, or the fleet (400, 405, 422, 503)
    └── NodeError               a named node failed the request
        ├── NodeAnswered        it answered with a non-2xx status
        ├── ReplyTooLarge       its 2xx reply passed the router's cap
        ├── NodeUnreachable     no complete answer came; the kind is the transport error's
        └── NodeRefused         it did not take the request: another pair may
            ├── NodeAsleep      it answered that it sleeps
            └── NodeRefusedConnection (also a NodeUnreachable)
"""

from __future__ import annotations

from typing import Any

import orjson

from pdfleet.vocabulary import openai_error_type
from router.http.errors import ConnectionRefused, FailureKind, NodeTimeout, TransportError
from router.http.reply import NodeReply
from router.registry import Node


class GenerationError(Exception):
    """A reply the client gets instead of a node's: `status`, a `message`, and `headers`
    to send with it (`Retry-After`)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def fields(self) -> dict[str, Any]:
        """The error object's fields, `code` aside."""
        return {"message": self.message, "type": openai_error_type(self.status)}

    def body(self) -> dict[str, Any]:
        return {"error": {**self.fields(), "code": self.status}}

    def sse_event(self) -> bytes:
        return b"data: " + orjson.dumps(self.body()) + b"\n\n"


class NodeError(GenerationError):
    """`node` failed the request; `what` it did completes the message, unless the node said
    itself what was wrong (`own_message`)."""

    def __init__(self, node: Node, status: int, what: str, own_message: str = "") -> None:
        super().__init__(status, own_message or f"{node.role.value} node {node.url} {what}")
        self.node = node

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "server": self.node.url, "role": self.node.role.value}


def node_message(body: bytes, text: str) -> tuple[str, str | None]:
    """A node's own message in its error `body`, and its error type if it names one, read
    from the shapes nodes answer with: OpenAI's, SGLang's and vLLM's `{"error": {"message",
    "type"}}`, FastAPI's `{"detail": "..."}` or `{"detail": [{"msg", "loc"}, ...]}` (422),
    pdfleet's and others' `{"message": ...}` or `{"error": "..."}`; else the (capped) `text`."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text, None
    if not isinstance(parsed, dict):
        return text, None
    error = parsed.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        kind = error.get("type")
        return error["message"], kind if isinstance(kind, str) and kind else None
    detail = parsed.get("detail")
    if isinstance(detail, str):
        return detail, None
    if isinstance(detail, list) and detail:
        return "; ".join(_validation_issue(issue) for issue in detail), None
    for key in ("message", "error"):
        if isinstance(parsed.get(key), str):
            return parsed[key], None
    return text, None


def _validation_issue(issue: Any) -> str:
    if not isinstance(issue, dict):
        return str(issue)
    where = ".".join(str(p) for p in issue.get("loc", ()) if p != "body")
    message = str(issue.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


def _reply_fields(reply: NodeReply) -> dict[str, Any]:
    return {"status": reply.status, "detail": reply.text()}


class NodeAnswered(NodeError):
    """The node answered with a non-2xx status: its status, its own message and error type
    where its body has them, and its capped body as `detail`."""

    def __init__(self, node: Node, reply: NodeReply) -> None:
        message, self.node_type = node_message(reply.body, reply.text())
        super().__init__(node, reply.status, f"answered HTTP {reply.status}", message.strip())
        self.reply = reply

    def fields(self) -> dict[str, Any]:
        fields = {**super().fields(), **_reply_fields(self.reply)}
        if self.node_type:
            fields["type"] = self.node_type
        return fields


class ReplyTooLarge(NodeError):
    def __init__(self, node: Node, limit: int) -> None:
        super().__init__(node, 502, f"replied with more than {limit} bytes")
        self.limit = limit


class NodeRefused(NodeError):
    """The node did not take the request, so it never ran there: safe to try another pair."""


class NodeAsleep(NodeRefused):
    """The node answered that it sleeps (`SLEEPING_HEADER`): it did not admit the request."""

    def __init__(self, node: Node, reply: NodeReply) -> None:
        super().__init__(node, 503, "is sleeping")
        self.reply = reply

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), **_reply_fields(self.reply)}


class NodeUnreachable(NodeError):
    """No complete answer came from the node: 504 if the deadline passed, 502 otherwise."""

    def __init__(self, node: Node, cause: TransportError) -> None:
        super().__init__(node, 504 if isinstance(cause, NodeTimeout) else 502, f"failed: {cause}")
        self.cause = cause

    @property
    def kind(self) -> FailureKind:
        return self.cause.kind

    def fields(self) -> dict[str, Any]:
        return {**super().fields(), "error": str(self.cause)}

    @staticmethod
    def of(node: Node, cause: TransportError) -> NodeUnreachable:
        """The error for `cause`: a refused connection is also a `NodeRefused`."""
        if isinstance(cause, ConnectionRefused):
            return NodeRefusedConnection(node, cause)
        return NodeUnreachable(node, cause)


class NodeRefusedConnection(NodeUnreachable, NodeRefused):
    """The node refused the connection: the request cannot have reached it."""
