"""router/http/connection.py: a node connection's life is one state and the transitions in
`TRANSITIONS`; anything else is refused."""

from __future__ import annotations

import pytest

from router.http.connection import TRANSITIONS, ConnectionState, InvalidTransition, next_state

S = ConnectionState


def allowed(current: ConnectionState, wanted: ConnectionState) -> bool:
    try:
        next_state(current, wanted)
    except InvalidTransition:
        return False
    return True


def test_a_connection_serves_an_exchange_then_goes_back_to_its_pool() -> None:
    path = [S.NEW, S.IDLE, S.ACTIVE, S.IDLE, S.ACTIVE, S.STREAMING, S.DRAINED, S.IDLE]
    state = path[0]
    for wanted in path[1:]:
        state = next_state(state, wanted)
    assert state is S.IDLE


def test_only_an_idle_connection_takes_a_request() -> None:
    assert {state for state in S if allowed(state, S.ACTIVE)} == {S.IDLE}


def test_a_stream_gives_its_connection_back_only_once_its_body_ended() -> None:
    assert not allowed(S.STREAMING, S.IDLE)
    assert allowed(S.DRAINED, S.IDLE)


def test_every_state_but_closed_may_close() -> None:
    assert {state for state in S if allowed(state, S.CLOSED)} == set(S) - {S.CLOSED}


@pytest.mark.parametrize("wanted", list(S))
def test_a_closed_connection_is_never_used_again(wanted: ConnectionState) -> None:
    with pytest.raises(InvalidTransition, match="from CLOSED"):
        next_state(S.CLOSED, wanted)


def test_every_state_has_its_transitions_listed() -> None:
    assert set(TRANSITIONS) == set(S)
