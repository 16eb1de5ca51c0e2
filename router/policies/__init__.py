"""Selection policies: which of several interchangeable nodes gets the next request.

A policy is a small object with one method, `pick(candidates)`, given the routable nodes of
one role (never empty). The proxy keeps one policy instance per role, so a stateful policy
such as round robin alternates prefill and decode nodes independently, as sgl-router does.
Adding a policy is one module here and one line in `POLICIES`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from router.config import Policy
from router.policies.least_outstanding import LeastOutstanding
from router.policies.random import RandomChoice
from router.policies.round_robin import RoundRobin
from router.registry import Node


class SelectionPolicy(Protocol):
    def pick(self, candidates: Sequence[Node]) -> Node: ...


POLICIES: dict[Policy, Callable[[], SelectionPolicy]] = {
    Policy.ROUND_ROBIN: RoundRobin,
    Policy.RANDOM: RandomChoice,
    Policy.LEAST_OUTSTANDING: LeastOutstanding,
}


def make_policy(policy: Policy) -> SelectionPolicy:
    return POLICIES[policy]()
