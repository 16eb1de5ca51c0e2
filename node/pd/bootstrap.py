"""The prefill node's bootstrap listener: decode nodes pull KV here.

`GET /kv/{room}?wait_s=S` long-polls up to S seconds (default 10, at most 60) for the room's
KV: 200 with the binary payload (see payload.py), 404 when it has not arrived in time (pull
again), 410 when it was dropped, expired or already handed off (it never will arrive), 503
when this node refused the request (it was not admitting): its KV is never computed.
`DELETE /kv/{room}?reason=...`: the decode node will never pull the room (it refused the
request); its KV is freed now, or as soon as the prefill computes it.
"""

from __future__ import annotations

from fastapi import FastAPI, Query
from fastapi.responses import Response

from node.http.errors import install_error_handlers
from node.pd.payload import CONTENT_TYPE
from node.pd.store import HandoffStore

DEFAULT_WAIT_S = 10.0
MAX_WAIT_S = 60.0


def create_bootstrap_app(store: HandoffStore) -> FastAPI:
    app = FastAPI(title="pdfleet node bootstrap", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/kv/{room}")
    async def pull_kv(
        room: int, wait_s: float = Query(DEFAULT_WAIT_S, ge=0, le=MAX_WAIT_S)
    ) -> Response:
        return Response(await store.claim(room, wait_s), media_type=CONTENT_TYPE)

    @app.delete("/kv/{room}")
    async def decline_kv(room: int, reason: str = Query("", max_length=200)) -> dict[str, bool]:
        return {"dropped": store.decline(room, reason or "no reason given")}

    return app
