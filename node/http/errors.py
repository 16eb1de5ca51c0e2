"""One place that turns every failure into `{"success": false, "message": ...}`.

Clients never see a traceback: `NodeError`s carry their status; FastAPI's validation errors
become 400 with the offending fields named; anything unexpected is logged and answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from node.errors import NodeError

log = logging.getLogger("node")


def error_payload(error: NodeError) -> dict[str, Any]:
    return {"success": False, "message": error.message, **error.detail}


def describe_validation(errors: list[Any]) -> str:
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NodeError)
    async def node_error(_: Request, error: NodeError) -> JSONResponse:
        return JSONResponse(error_payload(error), status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"success": False, "message": describe_validation(list(error.errors()))},
            status_code=400,
        )

    @app.exception_handler(ValidationError)
    async def model_invalid(_: Request, error: ValidationError) -> JSONResponse:
        return JSONResponse(
            {"success": False, "message": describe_validation(list(error.errors()))},
            status_code=400,
        )

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"success": False, "message": str(error.detail)},
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"success": False, "message": f"internal error: {type(error).__name__}: {error}"},
            status_code=500,
        )
