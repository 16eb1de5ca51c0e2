"""Peer messages between the router's worker processes are typed and validated on receipt."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pdfleet.vocabulary import Role
from router.config import NodeSpec
from router.peers import PEER_MESSAGES, NodeAdded, NodeRemoved


def test_a_message_comes_back_as_the_type_its_kind_names() -> None:
    added = NodeAdded(node=NodeSpec(url="http://127.0.0.1:30001", role=Role.DECODE))
    assert PEER_MESSAGES.validate_json(added.model_dump_json()) == added
    removed = NodeRemoved(url="http://127.0.0.1:30001")
    assert PEER_MESSAGES.validate_json(removed.model_dump_json()) == removed


@pytest.mark.parametrize("line", [
    b'{"kind": "reboot"}',
    b'{"kind": "remove"}',
    b'{"kind": "add", "node": {"url": "ftp://x", "role": "mixed"}}',
    b'{"kind": "control", "sequence": 1, "nodes": [{"url": "http://a"}], "operation": null}',
])
def test_a_malformed_message_is_refused(line: bytes) -> None:
    with pytest.raises(ValidationError):
        PEER_MESSAGES.validate_json(line)
