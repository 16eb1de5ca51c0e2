"""One place that turns every failure into the error reply of the route that failed.

Clients never see a traceback: `NodeError`s carry their status; FastAPI's validation errors
become 400 with the offending fields named; anything unexpected is logged and answered 500.
SGLang's routes answer `{"success": false, "message": ...}`; the OpenAI routes (`/v1/...`)
answer OpenAI's `{"error": {"message", "type", "code"}}`, which OpenAI clients read.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from node.errors import BadRequest, NodeError
from pdfleet.vocabulary import openai_error_type

log = logging.getLogger("node")

OPENAI_PREFIX = "/v1/"


def openai_error(error: NodeError) -> dict[str, Any]:
    """`error` in OpenAI's shape: the body of an HTTP error, or the last event of a stream."""
    return {"error": {"message": error.message, "type": openai_error_type(error.status),
                      "code": error.status, **error.detail}}


def error_payload(error: NodeError) -> dict[str, Any]:
    return {"success": False, "message": error.message, **error.detail}


def describe_validation(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "invalid request: " + "; ".join(parts)


def error_reply(request: Request, error: NodeError) -> JSONResponse:
    """`error` as the reply of the route `request` asked for."""
    openai = request.url.path.startswith(OPENAI_PREFIX)
    return JSONResponse(openai_error(error) if openai else error_payload(error),
                        status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NodeError)
    async def node_error(request: Request, error: NodeError) -> JSONResponse:
        return error_reply(request, error)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_reply(request, BadRequest(describe_validation(list(error.errors()))))

    @app.exception_handler(ValidationError)
    async def model_invalid(request: Request, error: ValidationError) -> JSONResponse:
        return error_reply(request, BadRequest(describe_validation(list(error.errors()))))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        answered = NodeError(str(error.detail), headers=error.headers)
        answered.status = error.status_code
        return error_reply(request, answered)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_reply(
            request, NodeError(f"internal error: {type(error).__name__}: {error}"))
