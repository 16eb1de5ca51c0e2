"""A route's generation requests run to their end: all at once for a reply (`complete`), or
one as SSE bytes ending with `[DONE]` (`sse_from_updates`).

A failure after the stream has started (KV never arrived, the request was aborted by a
release) becomes an error event before `[DONE]`, so no streaming client is left hanging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Any

from node.api.sse import DONE, error_event, event
from node.engine.engine import GenerationUpdate
from node.errors import NodeError, RequestAborted
from node.generation import GenerationRequest, GenerationService

log = logging.getLogger("node")


def aborted_error(update: GenerationUpdate) -> RequestAborted:
    assert update.finish is not None
    return RequestAborted(
        f"request aborted: {update.finish.message}",
        text=update.text,
        output_ids=update.output_ids,
    )


async def complete(
    service: GenerationService, requests: list[GenerationRequest]
) -> list[GenerationUpdate]:
    """Every request's final update, run at once (a batch, or one per OpenAI choice); the
    first failure, or an abort, is the reply's error once all have ended."""
    outcomes = await asyncio.gather(
        *(service.complete(r) for r in requests), return_exceptions=True
    )
    finals: list[GenerationUpdate] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        finals.append(outcome)
    for final in finals:
        if final.finish is not None and final.finish.type == "abort":
            raise aborted_error(final)
    return finals


async def sse_from_updates(
    updates: AsyncIterator[GenerationUpdate],
    render: Callable[[GenerationUpdate], Iterable[dict[str, Any]]],
) -> AsyncIterator[bytes]:
    try:
        async with aclosing(updates) as running:
            async for update in running:
                if update.finish is not None and update.finish.type == "abort":
                    yield error_event(aborted_error(update))
                    break
                for payload in render(update):
                    yield event(payload)
    except NodeError as error:
        yield error_event(error)
    except Exception as error:
        log.exception("generation stream failed")
        yield error_event(NodeError(f"internal error: {type(error).__name__}: {error}"))
    yield DONE
