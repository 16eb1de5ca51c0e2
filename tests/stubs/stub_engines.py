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

vLLM with `VLLM_SERVER_DEV_MODE=1` (`vllm/entrypoints/serve/sleep/api_router.py`,
`vllm/entrypoints/serve/cache/api_router.py`):
- `POST /sleep?level=N&mode=M` (level default 1; `int(level)` fails → 500),
  `POST /wake_up?tags=..&tags=..` (none: all), `POST /reset_prefix_cache`: 200, empty body.
- `GET /is_sleeping` → `{"is_sleeping": bool}`; `GET /health`: 200, empty body.
- The executor (`vllm/executor/executor_base.py`) sleeps weights and kv_cache together, ignores
  a sleep while asleep, and ignores a wake_up that names a tag that is not asleep.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

SGLANG_TAGS = {"weights", "kv_cache", "cuda_graph"}  # sglang's GPU_MEMORY_ALL_TYPES
VLLM_TAGS = {"weights", "kv_cache"}
SGLANG_FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are "
                  "running or waiting requests, the operation will not be performed.)\n")

ROUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "sglang": {
        "/release_memory_occupation": ("GET", "POST"),
        "/resume_memory_occupation": ("GET", "POST"),
        "/flush_cache": ("GET", "POST"),
        "/get_server_info": ("GET",),
        "/health": ("GET",),
    },
    "vllm": {
        "/sleep": ("POST",),
        "/wake_up": ("POST",),
        "/reset_prefix_cache": ("POST",),
        "/is_sleeping": ("GET",),
        "/health": ("GET",),
    },
}


def not_found() -> web.Response:
    return web.json_response({"detail": "Not Found"}, status=404)


def method_not_allowed(allowed: tuple[str, ...]) -> web.Response:
    return web.json_response({"detail": "Method Not Allowed"}, status=405,
                             headers={"Allow": ", ".join(allowed)})


def failure(engine: str, message: str) -> web.Response:
    """How the engine answers when the operation itself fails."""
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


def sglang(path: str, body: bytes, released: set[str]) -> web.Response:
    """SGLang's answer to a control route, updating `released` (its offloaded tags)."""
    if path == "/health":
        return web.Response(status=200)
    if path == "/get_server_info":
        return web.json_response({"model_path": "stub-model", "enable_memory_saver": True,
                                  "version": "stub"})
    if path == "/flush_cache":
        return web.Response(status=200, text=SGLANG_FLUSHED)
    payload = _sglang_body(body)
    if isinstance(payload, web.Response):
        return payload
    tags = set(payload.get("tags") or SGLANG_TAGS)
    if path == "/release_memory_occupation":
        released |= tags
    else:
        released -= tags
    return web.json_response(None)


def vllm(request: web.Request, released: set[str]) -> web.Response:
    """vLLM's answer to a control route, updating `released` (its sleeping tags)."""
    path = request.path
    if path == "/health":
        return web.Response(status=200)
    if path == "/is_sleeping":
        return web.json_response({"is_sleeping": bool(released)})
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
