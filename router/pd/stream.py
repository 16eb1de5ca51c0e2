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
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from router.http.errors import TransportError
from router.http.reply import NodeReply, NodeStream
from router.pd.errors import GenerationError
from router.registry import Node

Call = asyncio.Future[NodeReply | NodeStream]

# Records a node's transport failure and says what the client is told.
FailureReporter = Callable[[Node, TransportError], GenerationError]

# What a header value may hold as it is: printable ASCII. Anything else in a version is
# percent-encoded, so no version can end the header early.
_HEADER_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def served_version(said: bytes | None, node: Node) -> bytes | None:
    """The weight version a reply of `node` carries (`WEIGHT_VERSION_HEADER`): the node's
    own header (`said`) when it sent one, else the version the registry knows of it; None
    when neither is known."""
    if said:
        return said
    if node.weight_version_known and node.weight_version is not None:
        return quote(node.weight_version, safe=_HEADER_SAFE).encode()
    return None


class PrefillFailed(Exception):
    def __init__(self, error: GenerationError) -> None:
        super().__init__(error.message)
        self.error = error


class DecodeStream:
    """Owns the decode response, and counts as outstanding on its node until closed."""

    def __init__(self, node: Node, stream: NodeStream, failed: FailureReporter,
                 weight_version: bytes | None = None) -> None:
        node.outstanding += 1
        self.node = node
        self.status = stream.status
        self.content_type = stream.content_type
        self.weight_version = weight_version  # the header the reply carries: served_version
        self._stream = stream
        self._failed = failed
        self._prefill: Call | None = None
        self._keep: Callable[[Call], None] | None = None
        self._closed = False

    def watch_prefill(
        self,
        prefill: Call,
        check: Callable[[Call], None],
        keep: Callable[[Call], None],
    ) -> None:
        """End the relay with an error event if `prefill` fails (`check` raises on its
        ended call); if the
        stream completes first, hand the still-running prefill call to `keep`."""
        self._prefill = prefill
        self._keep = keep

        def on_done(call: Call) -> None:
            if call.cancelled():
                return
            try:
                check(call)
            except GenerationError as exc:
                if not self._closed:
                    self._stream.fail(PrefillFailed(exc))

        prefill.add_done_callback(on_done)

    async def pipe(self, write: Callable[[bytes], bool],
                   drained: Callable[[], Awaitable[None]]) -> None:
        """The stream through `write` as it arrives (`NodeStream.pipe`); a failure of
        either node becomes a last SSE error event."""
        try:
            await self._stream.pipe(write, drained)
        except PrefillFailed as exc:
            write(exc.error.sse_event())
        except TransportError as exc:
            write(self._failed(self.node, exc).sse_event())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.node.outstanding -= 1
        # Read to its end, the connection goes back to the pool; otherwise it is dropped,
        # and the node sees the disconnect and stops generating.
        self._stream.close()
        prefill = self._prefill
        if prefill is not None and not prefill.done():
            if self._stream.complete and self._keep is not None:
                self._keep(prefill)  # decode has its KV; let prefill finish its reply
            else:
                prefill.cancel()
