"""router/pd/errors.py: a node's refusal lends the client's error its own message, read from
whichever shape the node answers errors in, and OpenAI's error type for its status."""

from __future__ import annotations

import orjson
import pytest

from pdfleet.vocabulary import Role, openai_error_type
from router.http.reply import NodeReply
from router.pd.errors import NodeAnswered, node_message
from router.registry import Node

CONTEXT = "prompt plus max_new_tokens exceeds the context of 1024 tokens"


@pytest.mark.parametrize(("body", "message", "kind"), [
    ({"error": {"message": CONTEXT, "type": "BadRequestError", "code": 400}}, CONTEXT,
     "BadRequestError"),
    ({"object": "error", "message": CONTEXT, "type": "BadRequestError"}, CONTEXT, None),
    ({"success": False, "message": CONTEXT}, CONTEXT, None),
    ({"detail": CONTEXT}, CONTEXT, None),
    ({"detail": [{"loc": ["body", "text"], "msg": "Field required"},
                 {"loc": ["body"], "msg": "bad"}]}, "text: Field required; bad", None),
    ({"error": "node failed", "code": 429}, "node failed", None),
    ({"error": {"message": CONTEXT, "type": ""}}, CONTEXT, None),
])
def test_the_nodes_message_is_read_from_each_shape(
        body: dict[str, object], message: str, kind: str | None) -> None:
    raw = orjson.dumps(body)
    assert node_message(raw, raw.decode()) == (message, kind)


@pytest.mark.parametrize("body", [b"node error: out of luck", b"[1, 2]", b"{\"other\": 1}",
                                  b"\xff\xfe"])
def test_a_body_without_a_message_is_told_as_its_text(body: bytes) -> None:
    text = body.decode(errors="replace")
    assert node_message(body, text) == (text, None)


def test_a_refusal_is_the_nodes_message_and_status_in_openais_shape() -> None:
    body = orjson.dumps({"success": False, "message": CONTEXT})
    reply = NodeReply(status=400, body=body, truncated=False, content_type="application/json",
                      elapsed_ms=1.0)
    node = Node(url="http://10.0.0.7:30000", role=Role.PREFILL)
    assert NodeAnswered(node, reply).body() == {"error": {
        "message": CONTEXT, "type": "BadRequestError", "code": 400,
        "server": node.url, "role": "prefill", "status": 400, "detail": body.decode()}}


@pytest.mark.parametrize(("status", "kind"), [
    (400, "BadRequestError"), (404, "NotFoundError"), (429, "TooManyRequestsError"),
    (503, "ServiceUnavailableError"), (504, "GatewayTimeoutError"), (599, "Error")])
def test_openai_error_type_names_the_status(status: int, kind: str) -> None:
    assert openai_error_type(status) == kind


def test_a_refusal_with_an_empty_body_names_the_node_and_its_status() -> None:
    reply = NodeReply(status=500, body=b"", truncated=False, content_type="", elapsed_ms=1.0)
    node = Node(url="http://10.0.0.7:30000", role=Role.DECODE)
    error = NodeAnswered(node, reply)
    assert error.message == str(error) == f"decode node {node.url} answered HTTP 500"
