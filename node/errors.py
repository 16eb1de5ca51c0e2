"""The node's error hierarchy: each class is one HTTP status with a message for the client.

Routes raise these; one exception handler (`node.http.errors`) turns them into the route's
error shape (SGLang's or OpenAI's) with the right status and headers.
"""

from __future__ import annotations

from typing import Any

from pdfleet.vocabulary import SLEEPING_HEADER


class NodeError(Exception):
    status = 500

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class BadRequest(NodeError):
    status = 400


class Unauthorized(NodeError):
    status = 401


class ModelNotFound(NodeError):
    """An OpenAI request named a model this node does not serve."""

    status = 404


class OperationConflict(NodeError):
    """Another memory operation is running, or a drain did not finish in time."""

    status = 409


class HandoffGone(NodeError):
    """The KV a decode node asked for was dropped (TTL, abort or flush) and never comes back."""

    status = 410


class HandoffRefused(NodeError):
    """The prefill node refused the request whose KV a decode node asked for (it was not
    admitting: asleep or releasing memory), so that KV never comes."""

    status = 503


class PayloadTooLarge(NodeError):
    status = 413


class HandoffFailed(NodeError):
    """The prefill node answered the KV pull with an error or a payload that does not fit."""

    status = 502


class ServiceUnavailable(NodeError):
    status = 503


class NotAdmitted(ServiceUnavailable):
    """Generation is closed (sleeping, draining, updating weights); the client should come
    back later.

    `X-Pdfleet-Sleeping: 1` (with `sleeping`) tells a sleeping node's 503 apart from any
    other: a router that did not put the node to sleep itself learns it here, and places the
    request on another node. A node closed for a weight update is not asleep: it serves again
    in moments, without a wake call, so its 503 does not carry the header."""

    RETRY_AFTER_S = 5

    def __init__(self, message: str, *, sleeping: bool = True, **detail: Any) -> None:
        headers = {"Retry-After": str(self.RETRY_AFTER_S)}
        if sleeping:
            headers[SLEEPING_HEADER] = "1"
        super().__init__(message, headers=headers, **detail)


class BackendDisabled(ServiceUnavailable):
    pass


class RequestAborted(ServiceUnavailable):
    """An admitted request was ended by a release with drain=abort, a weight update with
    abort_all_requests, or a pause in abort mode."""


class WeightVersionMismatch(NodeError):
    """A decode node was handed KV that a prefill node computed with other weights."""

    status = 409


class HandoffTimeout(NodeError):
    status = 504


class GroupJoinFailed(NodeError):
    """A weights update group's rendezvous failed or timed out (a rank never came)."""

    status = 504


class InsufficientMemory(NodeError):
    status = 507
