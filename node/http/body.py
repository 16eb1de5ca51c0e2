"""Request bodies and the admin token, handled the same way on every route.

Bodies are read with a size cap (413), parsed as JSON (400 on bad JSON or a non-object) and
validated into a pydantic model (400 naming the bad fields). Memory routes accept an empty
body as `{}`, as SGLang clients send one.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from node.errors import BadRequest, PayloadTooLarge, Unauthorized
from node.http.errors import describe_validation

M = TypeVar("M", bound=BaseModel)


async def read_json_object(
    request: Request, *, max_bytes: int, allow_empty: bool = False
) -> dict[str, Any]:
    """The body as a JSON object: 413 past `max_bytes`, 400 unless it is one."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {max_bytes}")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes")
    if not raw.strip():
        if not allow_empty:
            raise BadRequest("request body is empty: send a JSON object")
        raw = bytearray(b"{}")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(value).__name__}")
    return value


async def read_body(
    request: Request, model: type[M], *, max_bytes: int, allow_empty: bool = False
) -> M:
    """The body validated into `model`: 400 naming the bad fields."""
    value = await read_json_object(request, max_bytes=max_bytes, allow_empty=allow_empty)
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise BadRequest(describe_validation(list(error.errors()))) from None


def require_admin(request: Request, token: str | None) -> None:
    """401 unless the request carries `Authorization: Bearer <token>` (when a token is set)."""
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip(), token):
        raise Unauthorized("this route needs Authorization: Bearer <admin token>")
