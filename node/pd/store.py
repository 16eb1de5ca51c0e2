"""KV a prefill node has computed and still owes a decode node, by bootstrap room.

Each held room keeps its KV slot and counts as in-flight work, so a memory release drains
(or aborts) it like a running request. Unclaimed KV is dropped after `ttl_s`, or at once when
the decode node declines the room (it refused the request, so it will never pull). A dropped
or claimed room leaves a tombstone, so a late or repeated pull fails at once with the reason.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from node.admission import Admission, InflightWork
from node.engine.engine import Engine, Prefilled
from node.errors import BadRequest, HandoffGone, HandoffRefused, NodeError
from node.pd.payload import KVHandoff, encode

_TOMBSTONES = 4096


class HandoffNotReady(NodeError):
    status = 404


@dataclass
class _Held:
    input_ids: list[int]
    prefilled: Prefilled
    work: InflightWork
    expiry: asyncio.TimerHandle
    # The weights the KV was computed with: a decode node serving other weights refuses it.
    weight_version: str | None


class HandoffStore:
    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        ttl_s: float,
        weight_version: Callable[[], str | None],
    ) -> None:
        self._engine = engine
        self._weight_version = weight_version
        self._admission = admission
        self._ttl_s = ttl_s
        self._held: dict[int, _Held] = {}
        self._gone: OrderedDict[int, str] = OrderedDict()
        # Rooms declined before their KV was computed: the KV is dropped as it arrives.
        self._declined: OrderedDict[int, str] = OrderedDict()
        # Rooms whose request this node refused: their KV is never computed.
        self._refused: OrderedDict[int, str] = OrderedDict()
        self._changed = asyncio.Event()

    @property
    def held_rooms(self) -> int:
        return len(self._held)

    def hold(self, room: int, input_ids: list[int], prefilled: Prefilled) -> None:
        """Keep `prefilled` (its slot included) until a decode node claims `room`."""
        if room in self._held:
            raise BadRequest(f"bootstrap_room {room} already holds KV waiting for its decode node")
        if room in self._declined:
            self._engine.free(prefilled)
            self._gone[room] = self._declined.pop(room)
            self._notify()
            return
        self._gone.pop(room, None)
        work = self._admission.register(f"kv hand-off for room {room}")
        work.on_abort(lambda reason: self._drop(room, f"KV for room {room} was dropped: {reason}"))
        expiry = asyncio.get_running_loop().call_later(
            self._ttl_s,
            self._drop,
            room,
            f"KV for room {room} expired: no decode node claimed it within {self._ttl_s:g}s",
        )
        self._held[room] = _Held(input_ids=input_ids, prefilled=prefilled, work=work,
                                 expiry=expiry, weight_version=self._weight_version())
        self._notify()

    async def claim(self, room: int, wait_s: float) -> bytes:
        """The room's payload, waiting up to `wait_s` for the prefill to get there."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while room not in self._held:
            if room in self._gone:
                raise HandoffGone(self._gone[room], room=room)
            if room in self._refused:
                raise HandoffRefused(self._refused[room], room=room)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise HandoffNotReady(f"no KV for room {room} within {wait_s:g}s", room=room)
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                continue
        held = self._held.pop(room)
        held.expiry.cancel()
        try:
            kv = await self._engine.export(held.prefilled)
            handoff = KVHandoff(
                room=room, input_ids=held.input_ids, kv=kv, logits=held.prefilled.logits.cpu(),
                weight_version=held.weight_version,
            )
            return encode(handoff)
        finally:
            self._forget(room, f"KV for room {room} was already handed off", held)

    def decline(self, room: int, reason: str) -> bool:
        """The decode node will never pull `room`: drop its KV now, or as soon as it is held.
        True if KV was held."""
        why = f"KV for room {room} was declined by its decode node: {reason}"
        if room in self._held:
            self._drop(room, why)
            return True
        if room not in self._gone:
            self._declined[room] = why
            while len(self._declined) > _TOMBSTONES:
                self._declined.popitem(last=False)
        return False

    def refuse(self, room: int, reason: str) -> None:
        """This node refused the request for `room`: a decode node that took it fails its
        pull at once (503) rather than waiting out its hand-off timeout, and its own release
        need not wait for that request."""
        if room in self._held:
            return
        self._refused[room] = f"the prefill node refused the request for room {room}: {reason}"
        while len(self._refused) > _TOMBSTONES:
            self._refused.popitem(last=False)
        self._notify()

    def drop_all(self, reason: str) -> int:
        rooms = list(self._held)
        for room in rooms:
            self._drop(room, f"KV for room {room} was dropped: {reason}")
        return len(rooms)

    def _drop(self, room: int, reason: str) -> None:
        held = self._held.pop(room, None)
        if held is not None:
            held.expiry.cancel()
            self._forget(room, reason, held)

    def _forget(self, room: int, reason: str, held: _Held) -> None:
        self._engine.free(held.prefilled)
        held.work.finish()
        self._gone[room] = reason
        while len(self._gone) > _TOMBSTONES:
            self._gone.popitem(last=False)
        self._notify()

    def _notify(self) -> None:
        # Wake every waiter, then start a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
