"""The generation routes as the OpenAPI document shows them.

`POST /generate`, `/v1/completions` and `/v1/chat/completions` are served by
`router.serving` straight from uvicorn's protocol, before the app sees them, so the
declarations here are never called: they exist so the published document describes those
routes, their bodies and their error replies.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from pdfleet.vocabulary import WEIGHT_VERSION_HEADER
from router.routes.schemas import ERROR_MEANINGS, json_body

router = APIRouter()


class GenerationBody(BaseModel):
    """SGLang's or OpenAI's request, relayed as it is; the router reads only `stream`."""

    model_config = ConfigDict(extra="allow")
    stream: bool | None = None


class GenerationErrorBody(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    code: int


class GenerationError(BaseModel):
    """OpenAI's error shape; a node's failure adds server, role and status (its message and
    status are then the node's) or error."""

    error: GenerationErrorBody


def _error(code: int) -> dict[str, Any]:
    return {"model": GenerationError, "description": ERROR_MEANINGS[code]}


GENERATION_REPLIES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The decode node's reply; with stream=true, its server-sent events.",
          "headers": {WEIGHT_VERSION_HEADER: {
              "description": "The weight version of the node that served the reply (absent "
                             "while the router does not know it).",
              "schema": {"type": "string"}}},
          "content": {"application/json": {"schema": {}},
                      "text/event-stream": {"schema": {
                          "type": "object", "properties": {"data": {"type": "string"}}}}}},
    400: _error(400),
    413: _error(413),
    422: _error(422),
    503: _error(503),
    "default": {"model": GenerationError,
                "description": "A node's error: its status and its own message (a refusal, "
                               "e.g. 404 for a model it does not serve), or the router's 502 "
                               "or 504 when the node failed."},
}

# The router's generation routes, in the order the OpenAPI document lists them.
GENERATION_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")

MODELS_REPLIES: dict[int | str, dict[str, Any]] = {
    503: _error(503),
    "default": {"description": "A node's error reply, relayed with its status.",
                "content": {"application/json": {"schema": {}}}},
}


async def _served_by_protocol() -> None:
    """Never called while `router.serving`'s protocol serves the app; an app served any
    other way fails loudly here rather than answering generation requests with nothing."""
    raise RuntimeError("the generation routes are served only by router.serving's protocol")


for _path in GENERATION_ROUTES:
    router.add_api_route(
        _path, _served_by_protocol, methods=["POST"], name=_path.strip("/"),
        responses=GENERATION_REPLIES, openapi_extra=json_body(GenerationBody, required=True),
    )
