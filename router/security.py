"""Admin token and request-size limits for the router's HTTP surface."""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pdfleet.vocabulary import ADMIN_TOKEN_ENV

log = logging.getLogger("router.security")


def admin_token_from_env() -> str | None:
    return os.environ.get(ADMIN_TOKEN_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure_no_auth: bool) -> None:
    """Refuse to serve state-changing routes to the network with nobody authenticated."""
    if token is None and not insecure_no_auth and not is_loopback(host):
        raise SystemExit(
            f"refusing to bind {host} without an admin token: set {ADMIN_TOKEN_ENV} "
            "or pass --insecure-no-auth"
        )


class AdminGuard:
    """FastAPI dependency: state-changing routes need `Authorization: Bearer <token>`."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def __call__(self, request: Request) -> None:
        if self._expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise HTTPException(
                401,
                detail=f"admin token required: send Authorization: Bearer <{ADMIN_TOKEN_ENV}>",
                headers={"WWW-Authenticate": "Bearer"},
            )


class BodyLimitMiddleware:
    """Answer 413 once a request body exceeds `max_bytes`, without buffering past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except BodyTooLarge:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        log.warning("%s %s answered 413: body larger than %d bytes",
                    scope["method"], scope["path"], self.max_bytes)
        body = body_too_large(self.max_bytes)
        await send({
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    pass


def body_too_large(max_bytes: int) -> bytes:
    """The 413 reply's body."""
    return json.dumps({"detail": f"request body larger than {max_bytes} bytes"}).encode()
