"""SGLang's control API, which pdfleet's own nodes speak too.

From SGLang's `python/sglang/srt/entrypoints/http_server.py`: `POST /release_memory_occupation`
and `/resume_memory_occupation` take `{"tags": [...] | null}` and answer 200 with JSON `null`
(the handler returns None); a failure answers 400 `{"error": {"message": ...}}`
(`_create_error_response`); `POST /flush_cache` answers 200 with a line of text. There is no
`/is_sleeping`; `/get_server_info` returns the server's arguments; `/health` answers 200 with an
empty body. pdfleet nodes add `/is_sleeping`, and `released_tags` and `memory` in their
replies, which the router uses wherever a node answers them.

The refit's routes, same file: `POST /pause_generation {"mode": "abort"|"retract"|"in_place"}`
and `POST /continue_generation` (both need a JSON body; they answer 200 `{"message",
"status": "ok"}`); `POST /update_weights_from_disk` answers 200 `{"success": true, "message",
"num_paused_requests"}` or 400 with `"success": false`; `/init_weights_update_group` and
`/update_weights_from_distributed` answer `{"success", "message"}` (200 / 400). A body SGLang
cannot read (an unknown pause mode) is a 400 from its validation handler. None of them says
the weight version afterwards: the update's `weight_version` is it. pdfleet nodes take
`{"mode": "wait"}` too (drain, as a release does) and say `weight_version` in their replies.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from pdfleet.vocabulary import MEMORY_TAGS, EngineName, Operation
from router.control.outcome import Answered
from router.engines.base import (
    ControlCall,
    Engine,
    Probe,
    error_answer,
    json_object,
    json_value,
    names_weight_version,
    weight_version_after,
)
from router.http.errors import TransportError


def reported_tags(result: Any) -> list[str] | None:
    if isinstance(result, dict) and isinstance(result.get("released_tags"), list):
        return [str(t) for t in result["released_tags"]]
    return None


def reported_memory(result: Any) -> dict[str, Any] | None:
    """pdfleet nodes say their memory after the operation; SGLang itself does not."""
    if isinstance(result, dict) and isinstance(result.get("memory"), dict):
        return result["memory"]
    return None


def refused_pause(call: ControlCall, answer: Answered) -> Answered:
    """A plain SGLang server refuses pause mode `wait` (only pdfleet nodes drain) with its
    validation error: say so in the caller's words."""
    if call.operation is not Operation.PAUSE or call.pause_mode != "wait" or answer.status not in (
            400, 422):
        return answer
    return replace(answer, detail=f"this node refused pause mode 'wait' (SGLang pauses only "
                                  f"with abort, retract or in_place): {answer.detail}")


class SGLang(Engine):
    name = EngineName.SGLANG

    async def _control(self, url: str, call: ControlCall) -> Answered:
        body, headers = call.body, call.headers
        if not body.strip() and call.operation is not Operation.FANOUT:
            # SGLang's handlers require a body (FastAPI answers 422 without one): an empty
            # request (vLLM clients send none) is the empty object, i.e. every tag, or the
            # default pause mode.
            body, headers = b"{}", {**headers, "Content-Type": "application/json"}
        reply = await self.post(f"{url}{call.route}", call, body, headers)
        if not reply.ok:
            return refused_pause(call, error_answer(reply))
        result = json_value(reply)
        return Answered(status=reply.status, elapsed_ms=round(reply.elapsed_ms, 2),
                        result=result, released_tags=reported_tags(result),
                        memory=reported_memory(result),
                        weight_version=weight_version_after(call, result))

    async def probe(self, url: str, deadline: float,
                    released_tags: frozenset[str]) -> Probe:
        """The weights a node serves: `GET /get_weight_version` -> `{"weight_version": v}`
        where the server has that route (SGLang and pdfleet nodes do), else the
        `weight_version` of `/get_server_info` (the server's arguments), else of
        `GET /model_info`."""
        replies = await asyncio.gather(
            self.get(f"{url}/is_sleeping", deadline),
            self.get(f"{url}/get_server_info", deadline),
            self.get(f"{url}/get_weight_version", deadline),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, TransportError):
                raise reply
        if all(isinstance(r, TransportError) for r in replies):
            return Probe(reachable=False, error=str(replies[0]))
        sleeping, info, version = (json_object(r) for r in replies)
        if sleeping is None and info is None and version is None:
            return await self.health(url, deadline)
        said = next((r for r in (version, info) if names_weight_version(r)), None)
        if said is None:
            with contextlib.suppress(TransportError):
                model_info = json_object(await self.get(f"{url}/model_info", deadline))
                said = model_info if names_weight_version(model_info) else None
        sleeping, info = sleeping or {}, info or {}
        tags = sleeping.get("released_tags", info.get("released_tags"))
        if tags is None and isinstance(sleeping.get("is_sleeping"), bool):
            tags = list(MEMORY_TAGS) if sleeping["is_sleeping"] else []
        memory, inflight = info.get("memory"), info.get("inflight")
        return Probe(
            reachable=True,
            released_tags=[str(t) for t in tags] if isinstance(tags, list) else None,
            memory=memory if isinstance(memory, dict) else None,
            inflight=inflight if isinstance(inflight, int) else None,
            weight_version=said["weight_version"] if said is not None else None,
            weight_version_known=said is not None,
        )
