"""Server-sent events as SGLang and OpenAI send them: `data: {json}` blocks, then `[DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from node.errors import NodeError

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def error_event(error: NodeError) -> bytes:
    return event(
        {"error": {"message": error.message, "type": type(error).__name__, "code": error.status}}
    )


def stream_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
