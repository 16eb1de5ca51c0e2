"""vLLM's sleep mode, served when vLLM runs with `VLLM_SERVER_DEV_MODE=1 --enable-sleep-mode`.

From vLLM's `vllm/entrypoints/serve/sleep/api_router.py`: `POST /sleep?level=1|2[&mode=...]`,
`POST /wake_up[?tags=weights&tags=kv_cache]` (no tags: all) and `GET /is_sleeping` →
`{"is_sleeping": bool}`; from `vllm/entrypoints/serve/cache/api_router.py`:
`POST /reset_prefix_cache`. The POST routes answer 200 with an empty body.

vLLM's allocator (`vllm/device_allocator/cumem.py`) has two tags, `weights` and `kv_cache`,
and sleep always takes both: level 1 keeps the weights in host memory, level 2 discards them.
So a release of only one of them cannot be done and is this node's failure. Its executor
ignores a sleep while already asleep, and a wake_up naming a tag that is not asleep, so the
router only names tags that are released.

The refit, from `vllm/entrypoints/serve/dev/rlhf/api_router.py`: `POST /pause?mode=abort|wait|
keep[&clear_cache=]` (200 `{"status": "paused"}`), `POST /resume` (200 `{"status":
"resumed"}`), `GET /is_paused`; and from `vllm/entrypoints/serve/dev/rpc/api_router.py`:
`POST /collective_rpc {"method", "args", "kwargs"}` (200 `{"results": [...]}`), through which
the workers' `reload_weights` loads a checkpoint. vLLM cannot retract requests, has no HTTP
route to join a trainer's process group (its weight transfer has routes of its own), and
never says which weights it serves.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from pdfleet.vocabulary import EngineName, Operation
from router.control.outcome import Answered, NodeOutcome, NoOp, Unsupported
from router.engines.base import (
    ControlCall,
    Engine,
    Probe,
    error_answer,
    json_object,
    json_value,
    weight_version_after,
)
from router.http.errors import TransportError
from router.http.reply import NodeReply

VLLM_TAGS = ("weights", "kv_cache")


class VLLM(Engine):
    name = EngineName.VLLM

    async def _control(self, url: str, call: ControlCall) -> NodeOutcome:
        asleep = call.released_tags & set(VLLM_TAGS)
        match call.operation:
            case Operation.FLUSH:
                return await self._post(f"{url}/reset_prefix_cache", call, None)
            case Operation.RELEASE:
                return await self._sleep(url, call, asleep)
            case Operation.RESUME:
                return await self._wake_up(url, call, asleep)
            case Operation.PAUSE if call.pause_mode == "retract":
                return Unsupported("vLLM cannot retract requests: pause with mode abort or "
                                   "in_place (vLLM's keep)")
            case Operation.PAUSE:
                return await self._post(
                    f"{url}/pause" + (f"?{call.query}" if call.query else ""), call, None)
            case Operation.CONTINUE:
                return await self._post(f"{url}/resume", call, None)
            case Operation.UPDATE_FROM_DISK:
                rpc = {"method": "reload_weights", "kwargs": {"weights_path": call.model_path}}
                return await self._post(f"{url}/collective_rpc", call, None,
                                        json.dumps(rpc).encode())
            case Operation.FANOUT:
                reply = await self.post(f"{url}{call.route}", call, call.body)
                return self._answer(reply, call, None)
        return Unsupported(f"vLLM has no HTTP route for {call.operation}: its weight transfer "
                           "has routes of its own (init_weight_transfer_engine, update_weights; "
                           "call them through /fanout)")

    async def _sleep(self, url: str, call: ControlCall, asleep: set[str]) -> NodeOutcome:
        asked = set(VLLM_TAGS) if call.tags is None else set(call.tags) & set(VLLM_TAGS)
        if not asked:
            return NoOp({"noop_tags": call.tags})
        if asked != set(VLLM_TAGS):
            return Unsupported(
                f"vLLM sleeps weights and kv_cache together: cannot release only "
                f"{sorted(asked)}; release both (or tags null)"
            )
        query = {"level": call.level, **({"mode": call.mode} if call.mode else {})}
        # Already asleep: vLLM ignores the call and its state stays as it is.
        after = asleep or set(VLLM_TAGS)
        return await self._post(f"{url}/sleep?{urlencode(query)}", call, after)

    async def _wake_up(self, url: str, call: ControlCall, asleep: set[str]) -> NodeOutcome:
        if call.tags is None:
            return await self._post(f"{url}/wake_up", call, set())
        woken = [t for t in VLLM_TAGS if t in call.tags and (not asleep or t in asleep)]
        if not woken:
            return NoOp({"noop_tags": call.tags})
        query = urlencode([("tags", t) for t in woken])
        return await self._post(f"{url}/wake_up?{query}", call, asleep - set(woken))

    async def _post(self, url: str, call: ControlCall, after: set[str] | None,
                    body: bytes | None = None) -> Answered:
        """POST `body` (JSON), or no body as vLLM's control routes take none; `after`: the
        released tags afterwards, where the call changes them."""
        headers = {k: v for k, v in call.headers.items() if k.lower() != "content-type"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self._answer(await self.post(url, call, body, headers), call, after)

    @staticmethod
    def _answer(reply: NodeReply, call: ControlCall, after: set[str] | None) -> Answered:
        if not reply.ok:
            return error_answer(reply)
        result = json_value(reply)
        return Answered(status=reply.status, elapsed_ms=round(reply.elapsed_ms, 2),
                        result=result, released_tags=None if after is None else sorted(after),
                        weight_version=weight_version_after(call, result))

    async def probe(self, url: str, deadline: float,
                    released_tags: frozenset[str]) -> Probe:
        try:
            reply = await self.get(f"{url}/is_sleeping", deadline)
        except TransportError as exc:
            return Probe(reachable=False, error=str(exc))
        status = json_object(reply)
        if status is None or not isinstance(status.get("is_sleeping"), bool):
            return await self.health(url, deadline)
        if not status["is_sleeping"]:
            return Probe(reachable=True, released_tags=[])
        # vLLM says only whether it sleeps: a partial wake we made is still "sleeping".
        known = released_tags & set(VLLM_TAGS)
        return Probe(reachable=True, released_tags=sorted(known or VLLM_TAGS))
