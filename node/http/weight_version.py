"""Every generation reply names the weight version that served it in a header, so a router
(or a trainer's rollout worker) can tell which policy produced each reply without reading
the body, streams included: the header goes out with the status line."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from node.metrics import GENERATION_ROUTES
from pdfleet.vocabulary import WEIGHT_VERSION_HEADER

_HEADER = WEIGHT_VERSION_HEADER.lower().encode()


class WeightVersionHeader:
    """ASGI middleware adding the header to the generation routes' replies; none while the
    weights are incomplete (those replies are refusals)."""

    def __init__(self, app: ASGIApp, version: Callable[[], str | None]) -> None:
        self.app = app
        self._version = version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_ROUTES:
            await self.app(scope, receive, send)
            return

        async def stamped(message: Message) -> None:
            version = self._version()
            if message["type"] == "http.response.start" and version is not None:
                headers = [*message.get("headers", []), (_HEADER, version.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, stamped)
