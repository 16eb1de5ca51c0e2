"""router/http/errors.py and router/pd/errors.py: a failure's kind is its class, and what the
OS or asyncio raised becomes one of our classes in one place."""

from __future__ import annotations

import socket
import ssl

import pytest

from pdfleet.vocabulary import Role
from router.http.errors import (
    ConnectionRefused,
    ConnectionReset,
    NodeTimeout,
    TransportError,
    transport_error,
)
from router.http.reply import NodeReply
from router.pd.errors import (
    NodeAnswered,
    NodeAsleep,
    NodeRefused,
    NodeUnreachable,
)
from router.registry import Node

NODE = Node(url="http://10.0.0.7:30000", role=Role.DECODE)


def test_the_kind_is_a_class_attribute() -> None:
    kinds = {cls: cls.kind for cls in (TransportError, ConnectionRefused, ConnectionReset,
                                       NodeTimeout)}
    assert kinds == {TransportError: "other", ConnectionRefused: "refused",
                     ConnectionReset: "reset", NodeTimeout: "timeout"}
    assert ConnectionReset("x").kind == "reset"


@pytest.mark.parametrize(("raised", "ours"), [
    (ConnectionRefusedError(111, "Connect call failed"), ConnectionRefused),
    (ConnectionResetError(104, "Connection reset by peer"), ConnectionReset),
    (BrokenPipeError(32, "Broken pipe"), ConnectionReset),
    (TimeoutError(), NodeTimeout),
    (socket.gaierror(-2, "Name or service not known"), TransportError),
    (ssl.SSLError(1, "certificate verify failed"), TransportError),
    (OSError(113, "No route to host"), TransportError),
])
def test_an_os_error_becomes_the_error_of_its_kind(raised: OSError,
                                                    ours: type[TransportError]) -> None:
    assert type(transport_error(raised)) is ours


def test_the_message_names_the_os_error_as_reports_show_it() -> None:
    error = transport_error(ConnectionRefusedError(111, "Connect call failed"))
    assert str(error) == "ConnectionRefusedError: [Errno 111] Connect call failed"
    assert str(transport_error(TimeoutError())) == "TimeoutError: TimeoutError()"


def test_a_given_detail_replaces_the_message() -> None:
    error = transport_error(TimeoutError(), "TimeoutError: no connection within 2.0 s")
    assert isinstance(error, NodeTimeout)
    assert str(error) == "TimeoutError: no connection within 2.0 s"


def test_our_own_error_is_kept_as_it_is() -> None:
    ours = ConnectionReset("ServerDisconnectedError: gone")
    assert transport_error(ours) is ours


@pytest.mark.parametrize("cause", [ConnectionRefused("r"), ConnectionReset("s"),
                                   NodeTimeout("t"), TransportError("o")])
def test_an_unreachable_node_is_reported_with_its_transport_kind(
        cause: TransportError) -> None:
    error = NodeUnreachable.of(NODE, cause)
    assert error.kind == cause.kind
    assert error.status == (504 if cause.kind == "timeout" else 502)
    assert error.body() == {"error": {
        "message": f"decode node {NODE.url} failed: {cause}",
        "type": "GatewayTimeoutError" if cause.kind == "timeout" else "BadGatewayError",
        "server": NODE.url, "role": "decode", "error": str(cause), "code": error.status}}


def test_only_a_refused_connection_or_a_sleeping_node_may_be_placed_elsewhere() -> None:
    sleeping = NodeReply(503, b"asleep", False, "text/plain", 1.0, node_sleeping=True)
    failing = NodeReply(500, b"boom", False, "text/plain", 1.0)
    refused = [NodeUnreachable.of(NODE, cause)
               for cause in (ConnectionRefused("r"), ConnectionReset("s"), NodeTimeout("t"))]
    assert [isinstance(e, NodeRefused) for e in refused] == [True, False, False]
    assert isinstance(NodeAsleep(NODE, sleeping), NodeRefused)
    assert not isinstance(NodeAnswered(NODE, failing), NodeRefused)


def test_a_node_answer_is_relayed_with_its_status_and_detail() -> None:
    error = NodeAnswered(NODE, NodeReply(429, b"slow down", False, "text/plain", 1.0))
    assert error.status == 429
    assert error.body() == {"error": {
        "message": "slow down", "type": "TooManyRequestsError", "server": NODE.url,
        "role": "decode", "status": 429, "detail": "slow down", "code": 429}}
    assert error.sse_event().startswith(b'data: {"error":{"message":"slow down"')
