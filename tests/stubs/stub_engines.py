"""The control and status routes of SGLang and vLLM servers, answered as those servers do,
for stub nodes with `"engine": "sglang" | "vllm"` (tests/stubs/stub_nodes.py).

SGLang, `python/sglang/srt/entrypoints/http_server.py`:
- `POST|GET /release_memory_occupation`, `/resume_memory_occupation`: the body is a
  `ReleaseMemoryOccupationReqInput` / `ResumeMemoryOccupationReqInput` (`{"tags": [...] |
  null}`; null: every tag), so a missing or non-JSON body is FastAPI's 422; success returns
  None, i.e. 200 with JSON `null`; a failure is `_create_error_response(e)`: 400
  `{"error": {"message": str(e)}}`.
- `POST|GET /flush_cache`: 200 with a line of text (400 when requests are running).
- `GET /get_server_info`: the server's arguments as JSON; `GET /health`: 200, empty body.
- no `/is_sleeping`.
- `POST /pause_generation` (`PauseGenerationReqInput`: `{"mode": "abort"|"retract"|
  "in_place"}`, default abort) and `POST /continue_generation`: a JSON body is required;
  200 `{"message": "Generation paused successfully.", "status": "ok"}` (continued likewise).
  Another mode fails validation, which SGLang's handler answers 400 `{"object": "error",
  "message", "type": "Bad Request", "param": null, "code": 400}`.
- `POST /update_weights_from_disk` (`model_path` required): 200 `{"success": true, "message",
  "num_paused_requests": 0}`, 400 with `"success": false` on failure; a `weight_version` in
  the body becomes the server's version on success. `POST /init_weights_update_group`,
  `/update_weights_from_distributed`: `{"success", "message"}`, 200 / 400.
- `GET /get_weight_version` → `{"weight_version": v}` (the server starts at "default").

vLLM with `VLLM_SERVER_DEV_MODE=1` (`vllm/entrypoints/serve/sleep/api_router.py`,
`vllm/entrypoints/serve/cache/api_router.py`):
- `POST /sleep?level=N&mode=M` (level default 1; `int(level)` fails → 500),
  `POST /wake_up?tags=..&tags=..` (none: all), `POST /reset_prefix_cache`: 200, empty body.
- `GET /is_sleeping` → `{"is_sleeping": bool}`; `GET /health`: 200, empty body.
- `vllm/entrypoints/serve/dev/rlhf/api_router.py`: `POST /pause?mode=abort|wait|keep
  [&clear_cache=]` → 200 `{"status": "paused"}` (another mode: FastAPI's 422),
  `POST /resume` → 200 `{"status": "resumed"}`, `GET /is_paused` → `{"is_paused": bool}`.
- `vllm/entrypoints/serve/dev/rpc/api_router.py`: `POST /collective_rpc {"method", "args",
  "kwargs"}` → 200 `{"results": [one per worker]}` (`reload_weights` returns None), 400
  `{"detail": "Missing 'method' in request body"}`. vLLM says no weight version.
- The executor (`vllm/executor/executor_base.py`) sleeps weights and kv_cache together, ignores
  a sleep while asleep, and ignores a wake_up that names a tag that is not asleep.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SGLANG_TAGS = {"weights", "kv_cache", "cuda_graph"}  # sglang's GPU_MEMORY_ALL_TYPES
VLLM_TAGS = {"weights", "kv_cache"}
SGLANG_FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are "
                  "running or waiting requests, the operation will not be performed.)\n")

SGLANG_PAUSE_MODES = ("abort", "retract", "in_place")
VLLM_PAUSE_MODES = ("abort", "wait", "keep")
# SGLang's replies to the weight routes, on success.
SGLANG_DONE = {
    "/update_weights_from_disk": "Succeeded to update model weights.",
    "/init_weights_update_group": "Succeeded to initialize custom process group.",
    "/update_weights_from_distributed": "Succeeded to update parameter online.",
}
SGLANG_WEIGHT_UPDATES = ("/update_weights_from_disk", "/update_weights_from_distributed")

ROUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "sglang": {
        "/release_memory_occupation": ("GET", "POST"),
        "/resume_memory_occupation": ("GET", "POST"),
        "/flush_cache": ("GET", "POST"),
        "/get_server_info": ("GET",),
        "/health": ("GET",),
        "/pause_generation": ("POST",),
        "/continue_generation": ("POST",),
        **{path: ("POST",) for path in SGLANG_DONE},
        "/get_weight_version": ("GET",),
    },
    "vllm": {
        "/sleep": ("POST",),
        "/wake_up": ("POST",),
        "/reset_prefix_cache": ("POST",),
        "/is_sleeping": ("GET",),
        "/health": ("GET",),
        "/pause": ("POST",),
        "/resume": ("POST",),
        "/is_paused": ("GET",),
        "/collective_rpc": ("POST",),
    },
}


@dataclass
class EngineState:
    """What one stub server of either engine holds across calls."""

    released: set[str] = field(default_factory=set)  # offloaded / sleeping tags
    paused: bool = False
    weight_version: str = "default"  # SGLang's initial version


def answer(engine: str, request: web.Request, body: bytes, state: EngineState,
           fail: str | None) -> web.Response:
    """The engine server's answer to a control or status route; `fail`: the operation itself
    fails with this message."""
    allowed = ROUTES[engine].get(request.path)
    if allowed is None:
        return not_found()
    if request.method not in allowed:
        return method_not_allowed(allowed)
    if fail:
        return failure(engine, request.path, fail)
    if engine == "sglang":
        return sglang(request.path, body, state)
    return vllm(request, body, state)


def not_found() -> web.Response:
    return web.json_response({"detail": "Not Found"}, status=404)


def method_not_allowed(allowed: tuple[str, ...]) -> web.Response:
    return web.json_response({"detail": "Method Not Allowed"}, status=405,
                             headers={"Allow": ", ".join(allowed)})


def failure(engine: str, path: str, message: str) -> web.Response:
    """How the engine answers when the operation itself fails."""
    if engine == "sglang" and path in SGLANG_DONE:
        reply: dict[str, Any] = {"success": False, "message": message}
        if path == "/update_weights_from_disk":
            reply["num_paused_requests"] = 0
        return web.json_response(reply, status=400)
    if engine == "sglang":
        return web.json_response({"error": {"message": message}}, status=400)
    # vLLM's routes do not catch: the exception is Starlette's plain 500.
    return web.Response(status=500, text="Internal Server Error")


def _sglang_body(body: bytes) -> dict[str, Any] | web.Response:
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        return web.json_response({"detail": [{
            "type": "missing" if not body.strip() else "json_invalid",
            "loc": ["body"], "msg": "Field required" if not body.strip() else "JSON decode error",
        }]}, status=422)
    return payload


def sglang_refusal(field_name: str, message: str, given: Any) -> web.Response:
    """A body SGLang's request model refuses: its validation handler's 400."""
    error = [{"type": "literal_error", "loc": ["body", field_name], "msg": message,
              "input": given}]
    return web.json_response({"object": "error", "message": f"{error}", "type": "Bad Request",
                              "param": None, "code": 400}, status=400)


def sglang(path: str, body: bytes, state: EngineState) -> web.Response:
    """SGLang's answer to a control route, updating `state`."""
    if path == "/health":
        return web.Response(status=200)
    if path == "/get_server_info":
        return web.json_response({"model_path": "stub-model", "enable_memory_saver": True,
                                  "version": "stub", "weight_version": state.weight_version})
    if path == "/get_weight_version":
        return web.json_response({"weight_version": state.weight_version})
    if path == "/flush_cache":
        return web.Response(status=200, text=SGLANG_FLUSHED)
    payload = _sglang_body(body)
    if isinstance(payload, web.Response):
        return payload
    if path == "/pause_generation":
        mode = payload.get("mode", "abort")
        if mode not in SGLANG_PAUSE_MODES:
            return sglang_refusal("mode", "Input should be 'abort', 'retract' or 'in_place'",
                                  mode)
        state.paused = True
        return web.json_response({"message": "Generation paused successfully.",
                                  "status": "ok"})
    if path == "/continue_generation":
        state.paused = False
        return web.json_response({"message": "Generation continued successfully.",
                                  "status": "ok"})
    if path in SGLANG_DONE:
        return sglang_weights(path, payload, state)
    tags = set(payload.get("tags") or SGLANG_TAGS)
    if path == "/release_memory_occupation":
        state.released |= tags
    else:
        state.released -= tags
    return web.json_response(None)


def sglang_weights(path: str, payload: dict[str, Any], state: EngineState) -> web.Response:
    """The weight routes: the request model's required fields, then success."""
    if path == "/update_weights_from_disk" and not isinstance(payload.get("model_path"), str):
        return web.json_response({"object": "error", "message": "model_path: Field required",
                                  "type": "Bad Request", "param": None, "code": 400}, status=400)
    message = SGLANG_DONE[path]
    version = payload.get("weight_version")
    if path in SGLANG_WEIGHT_UPDATES and isinstance(version, str):
        state.weight_version = version
        message += f" Weight version updated to {version}."
    reply: dict[str, Any] = {"success": True, "message": message}
    if path == "/update_weights_from_disk":
        reply["num_paused_requests"] = 0
    return web.json_response(reply)


def vllm(request: web.Request, body: bytes, state: EngineState) -> web.Response:
    """vLLM's answer to a control route, updating `state`."""
    path, released = request.path, state.released
    if path == "/health":
        return web.Response(status=200)
    if path == "/is_sleeping":
        return web.json_response({"is_sleeping": bool(released)})
    if path == "/is_paused":
        return web.json_response({"is_paused": state.paused})
    if path == "/pause":
        mode = request.query.get("mode", "abort")
        if mode not in VLLM_PAUSE_MODES:
            return web.json_response({"detail": [{
                "type": "enum", "loc": ["query", "mode"], "input": mode,
                "msg": "Input should be 'abort', 'wait' or 'keep'"}]}, status=422)
        state.paused = True
        return web.json_response({"status": "paused"})
    if path == "/resume":
        state.paused = False
        return web.json_response({"status": "resumed"})
    if path == "/collective_rpc":
        return vllm_rpc(body)
    if path == "/sleep":
        try:
            int(request.query.get("level", "1"))
        except ValueError:
            return web.Response(status=500, text="Internal Server Error")
        if not released:
            released |= VLLM_TAGS
    elif path == "/wake_up":
        tags = request.query.getall("tags", []) or None
        if tags is None:
            released.clear()
        elif all(t in released for t in tags):
            released -= set(tags)
    return web.Response(status=200)


def vllm_rpc(body: bytes) -> web.Response:
    """`/collective_rpc`: one stub worker, whose methods (`reload_weights` among them)
    return None."""
    try:
        payload = json.loads(body)
    except ValueError as exc:
        return web.json_response({"detail": f"JSON decode error: {exc}"}, status=400)
    if not isinstance(payload, dict) or payload.get("method") is None:
        return web.json_response({"detail": "Missing 'method' in request body"}, status=400)
    return web.json_response({"results": [None]})
