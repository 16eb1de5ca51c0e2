"""How a call to a node fails when no complete reply came (a reply with a non-2xx status is
not an error here: the node answered, and `NodeReply.ok` says so).

    TransportError          kind "other": DNS, TLS, a bad URL, a reply that is not HTTP
    ├── ConnectionRefused   kind "refused": the request cannot have reached the node
    ├── ConnectionReset     kind "reset": the connection broke before the reply was complete
    └── NodeTimeout         kind "timeout": the deadline passed first

The class is the kind: reports and metrics name a failure by `kind`, callers catch the level
they care about, and only `ConnectionRefused` is safe to retry. `transport_error` is the one
place where what the OS or asyncio raised becomes one of these.
"""

from __future__ import annotations

from typing import ClassVar, Literal

FailureKind = Literal["refused", "reset", "timeout", "other"]


class TransportError(Exception):
    """No complete reply came from the node."""

    kind: ClassVar[FailureKind] = "other"


class ConnectionRefused(TransportError):
    """The node refused the connection: the request cannot have reached it."""

    kind = "refused"


class ConnectionReset(TransportError):
    """The connection broke before the reply was complete."""

    kind = "reset"


class NodeTimeout(TransportError):
    """The deadline passed before the node's reply was read."""

    kind = "timeout"


# First match wins: ConnectionRefusedError is a ConnectionError, and both are OSErrors, as
# is TimeoutError; any other OSError (DNS, unreachable, TLS) is "other".
_BY_OS_ERROR: tuple[tuple[type[BaseException], type[TransportError]], ...] = (
    (ConnectionRefusedError, ConnectionRefused),
    (ConnectionError, ConnectionReset),
    (TimeoutError, NodeTimeout),
)


def transport_error(exc: BaseException, detail: str | None = None) -> TransportError:
    """Our error for `exc`, raised by the OS or asyncio on a node connection; its message is
    `detail`, by default `describe(exc)`."""
    if isinstance(exc, TransportError):
        return exc
    kind = next((ours for theirs, ours in _BY_OS_ERROR if isinstance(exc, theirs)),
                TransportError)
    return kind(describe(exc) if detail is None else detail)


def describe(exc: BaseException) -> str:
    """`exc` as reports show it: its class, then its message."""
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"
