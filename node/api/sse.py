"""Server-sent events as SGLang and OpenAI send them: `data: {json}` blocks, then `[DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from node.errors import NodeError
from node.http.errors import openai_error

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def error_event(error: NodeError) -> bytes:
    """A stream's last event before `[DONE]` when it fails: the error in OpenAI's shape,
    which OpenAI clients raise and SGLang's clients read."""
    return event(openai_error(error))


def stream_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
