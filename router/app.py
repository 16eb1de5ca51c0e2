"""The router process: builds the FastAPI app from a fleet config and serves it."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from router import serving
from router.config import FleetConfig
from router.fanout import ControlPlane
from router.pd.proxy import GenerationProxy
from router.poller import StatusPoller
from router.registry import FleetRegistry
from router.routes import control, fleet, generate
from router.security import AdminGuard, BodyLimitMiddleware, check_bind
from router.state import RouterState
from router.upstream import new_session


def create_app(config: FleetConfig, admin_token: str | None) -> FastAPI:
    settings = config.router
    registry = FleetRegistry(config.nodes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session = new_session()
        poller = StatusPoller(registry, session, settings)
        app.state.router = RouterState(
            settings=settings,
            registry=registry,
            session=session,
            control=ControlPlane(registry, session, settings),
            proxy=GenerationProxy(registry, session, settings),
            poller=poller,
            admin=AdminGuard(admin_token),
        )
        poller.start()
        # What exists now lives as long as the process: keep it out of every collection.
        # Each proxied request allocates many short-lived objects; with the default
        # threshold (700) the collector runs several times per request, costing CPU and
        # tail latency on the generation path.
        gc.freeze()
        gc.set_threshold(50_000)
        try:
            yield
        finally:
            await poller.stop()
            await session.close()

    app = FastAPI(title="pdfleet router", lifespan=lifespan)
    # Added first, so the body limit (added next) wraps it.
    app.add_middleware(generate.GenerationRoutes)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    app.include_router(control.router)
    app.include_router(fleet.router)
    app.include_router(generate.router)
    return app


def serve(config: FleetConfig, admin_token: str | None, insecure_no_auth: bool = False) -> None:
    settings = config.router
    check_bind(settings.host, admin_token, insecure_no_auth)
    app = create_app(config, admin_token)
    uvicorn.run(
        app,
        http=serving.protocol_class(app),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # nothing reads the client address; saves a layer per request
        timeout_graceful_shutdown=5,
    )
