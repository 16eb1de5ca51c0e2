"""The decode node's streaming reply, relayed to the client chunk by chunk as it arrives.

The relay never waits for the prefill node, yet cannot ignore it: a decode node whose
prefill failed waits for KV that will never come. So the prefill call is watched from the
side (a done-callback, nothing per chunk) and its failure ends the relay with an SSE error
event. Whoever serves the stream must call `close()` however the response ends — done,
client gone, or broken — which releases the decode connection, the node's outstanding
count, and the prefill call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aiohttp

from router.pd.errors import GenerationError
from router.registry import Node
from router.upstream import NodeReply, NodeTimeout, TransportError, transport_error

# Records a node's transport failure and says what the client is told.
FailureReporter = Callable[[Node, TransportError], GenerationError]


class PrefillFailed(Exception):
    def __init__(self, error: GenerationError) -> None:
        super().__init__(error.detail)
        self.error = error


class DecodeStream:
    """Owns the decode response, and counts as outstanding on its node until closed."""

    def __init__(self, node: Node, resp: aiohttp.ClientResponse, failed: FailureReporter) -> None:
        node.outstanding += 1
        self.node = node
        self.status = resp.status
        self.content_type = resp.headers.get("Content-Type", "text/event-stream")
        self._resp = resp
        self._failed = failed
        self._prefill: asyncio.Task[NodeReply] | None = None
        self._keep: Callable[[asyncio.Task[NodeReply]], None] | None = None
        self._complete = False
        self._closed = False

    def watch_prefill(
        self,
        prefill: asyncio.Task[NodeReply],
        check: Callable[[NodeReply], None],
        keep: Callable[[asyncio.Task[NodeReply]], None],
    ) -> None:
        """End the relay with an error event if `prefill` fails (`check` raises); if the
        stream completes first, hand the still-running prefill call to `keep`."""
        self._prefill = prefill
        self._keep = keep

        def on_done(task: asyncio.Task[NodeReply]) -> None:
            if task.cancelled():
                return
            try:
                check(task.result())
            except GenerationError as exc:
                if not self._closed:
                    self._resp.content.set_exception(PrefillFailed(exc))

        prefill.add_done_callback(on_done)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except PrefillFailed as exc:
            yield exc.error.sse_event()
        except TimeoutError:
            timeout = NodeTimeout("TimeoutError: the stream ran past request_timeout_s")
            yield self._failed(self.node, timeout).sse_event()
        except (aiohttp.ClientError, OSError) as exc:
            yield self._failed(self.node, transport_error(exc)).sse_event()
        else:
            self._complete = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.node.outstanding -= 1
        if self._complete:
            self._resp.release()  # fully read: the connection goes back to the pool
        else:
            self._resp.close()  # the node sees the disconnect and stops generating
        prefill = self._prefill
        if prefill is not None and not prefill.done():
            if self._complete and self._keep is not None:
                self._keep(prefill)  # decode has its KV; let prefill finish its reply
            else:
                prefill.cancel()
