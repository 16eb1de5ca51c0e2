"""The decode node's side of the hand-off: pull a room's KV from the prefill node.

The router sends the same request to both nodes at once, so the KV may not exist yet when the
pull starts: the puller long-polls until the KV arrives, the prefill node says it is gone,
`timeout_s` passes, or the request is aborted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import aiohttp

from node.admission import InflightWork
from node.errors import HandoffFailed, HandoffRefused, HandoffTimeout, RequestAborted
from node.pd.payload import CONTENT_TYPE, KVHandoff, decode
from pdfleet.retry import RetryPolicy, retry

_LONG_POLL_S = 10.0
# The prefill node may not be listening yet (it is started alongside): retry that quickly,
# until the pull's own timeout.
_CONNECT_RETRY = RetryPolicy(on=(aiohttp.ClientConnectionError,), waits=(0.1,))
_ERROR_BODY_BYTES = 500
_DECLINE_TIMEOUT_S = 5.0

log = logging.getLogger("node.pd")


@dataclass(frozen=True)
class BootstrapTarget:
    host: str
    port: int
    room: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/kv/{self.room}"


class KVPuller:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None
        self._declines: set[asyncio.Task[None]] = set()

    def decline(self, target: BootstrapTarget, reason: str) -> None:
        """Tell the prefill node, in the background, that this node will never pull `target`'s
        KV, so it frees it now. Best effort: if the call fails, the KV's TTL still frees it."""
        task = asyncio.ensure_future(self._decline(target, reason))
        self._declines.add(task)
        task.add_done_callback(self._declines.discard)

    async def _decline(self, target: BootstrapTarget, reason: str) -> None:
        try:
            async with asyncio.timeout(_DECLINE_TIMEOUT_S):
                await self._get_session().delete(target.url, params={"reason": reason[:200]})
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            log.info("could not decline KV room %d at %s:%d: %s",
                     target.room, target.host, target.port, error)

    async def pull(self, target: BootstrapTarget, work: InflightWork) -> KVHandoff:
        poll = asyncio.ensure_future(asyncio.wait_for(self._poll(target), self.timeout_s))
        aborted = asyncio.ensure_future(work.wait_aborted())
        try:
            await asyncio.wait({poll, aborted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborted.cancel()
            if not poll.done():
                poll.cancel()
        if not poll.done():
            raise RequestAborted(f"request aborted while waiting for its KV: {work.abort_reason}")
        try:
            return poll.result()
        except TimeoutError:
            raise HandoffTimeout(
                f"no KV for bootstrap_room {target.room} from {target.host}:{target.port} "
                f"within {self.timeout_s:g}s",
                bootstrap_room=target.room,
            ) from None

    async def _poll(self, target: BootstrapTarget) -> KVHandoff:
        session = self._get_session()
        while (payload := await retry(lambda: self._ask(session, target), _CONNECT_RETRY)) is None:
            pass  # not there yet: the prefill node held the poll as long as it may; ask again
        try:
            return decode(payload)
        except (ValueError, KeyError) as error:
            raise HandoffFailed(
                f"malformed KV payload for room {target.room}: {error}"
            ) from None

    async def _ask(self, session: aiohttp.ClientSession, target: BootstrapTarget) -> bytes | None:
        """One long poll: the room's KV payload, or None if it has not arrived yet."""
        async with session.get(target.url, params={"wait_s": str(_LONG_POLL_S)}) as reply:
            if reply.status == 404:
                return None
            if reply.status != 200 or reply.content_type != CONTENT_TYPE:
                detail = (await reply.content.read(_ERROR_BODY_BYTES)).decode(errors="replace")
                failure = HandoffRefused if reply.status == HandoffRefused.status else HandoffFailed
                raise failure(
                    f"prefill node {target.host}:{target.port} answered the KV pull for "
                    f"room {target.room} with HTTP {reply.status}: {detail}",
                    bootstrap_room=target.room,
                )
            return await reply.read()

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_read=_LONG_POLL_S + 10)
            )
        return self._session

    async def close(self) -> None:
        await asyncio.gather(*self._declines, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
