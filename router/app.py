"""The router process: builds the FastAPI app from a fleet config and serves it."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from pdfleet.vocabulary import WORKER_HEADER
from router import serving
from router.config import FleetConfig
from router.control.lock import ControlLock, LocalControlLock, WorkerControlLock
from router.control.plane import ControlPlane
from router.dashboard import routes as dashboard
from router.http.pool import new_session
from router.metrics import RequestCounting, RouterMetrics
from router.operations import OperationLog
from router.pd.proxy import GenerationProxy
from router.peers import Peers, WorkerPlace
from router.poller import StatusPoller
from router.registry import FleetRegistry
from router.routes import control, fleet, generate, generation_docs, methods, observability
from router.security import AdminGuard, BodyLimitMiddleware, check_bind
from router.state import RouterState


def create_app(
    config: FleetConfig, admin_token: str | None, place: WorkerPlace | None = None
) -> FastAPI:
    settings = config.router
    registry = FleetRegistry(config.nodes)
    metrics = RouterMetrics(registry)
    operations = OperationLog()

    control_lock: ControlLock = LocalControlLock() if place is None else WorkerControlLock(
        place.control_lock, place.control_state, place.index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        peers = Peers(registry, place, control_lock, on_peer_operation=operations.record)
        await peers.start()
        session = new_session()
        poller = StatusPoller(registry, session, settings)
        control = ControlPlane(registry, session, settings, control_lock,
                               observers=[registry, poller, operations, metrics, peers])
        kubernetes = config.discovery.kubernetes
        discovery = None
        if kubernetes is not None:
            # The Kubernetes client is loaded only by a router that discovers pods.
            from router.discovery.kubernetes import KubernetesWatcher
            from router.discovery.membership import DiscoveredFleet

            discovery = KubernetesWatcher(
                kubernetes, DiscoveredFleet(registry, control, settings, kubernetes.on_join),
                on_error=lambda role: metrics.discovery_errors.labels("kubernetes", role).inc())
        app.state.router = RouterState(
            settings=settings,
            registry=registry,
            session=session,
            control=control,
            proxy=GenerationProxy(registry, session, settings),
            poller=poller,
            admin=AdminGuard(admin_token),
            metrics=metrics,
            operations=operations,
            peers=peers,
            discovery=discovery,
        )
        if discovery is not None:
            metrics.watch_discovery(discovery.status)
            discovery.start()
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
            if discovery is not None:
                await discovery.stop()
            await poller.stop()
            await session.close()
            await peers.stop()

    app = FastAPI(title="pdfleet router", lifespan=lifespan)
    # Added before the body limit, so the body limit wraps it. Generation requests never
    # reach either: router.serving answers (and counts) them before ASGI.
    app.add_middleware(RequestCounting)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    app.add_exception_handler(405, methods.method_not_allowed)
    app.include_router(control.router)
    app.include_router(fleet.router)
    app.include_router(generate.router)
    app.include_router(observability.router)
    app.include_router(dashboard.router)
    app.include_router(generation_docs.router)
    return app


def serve(
    config: FleetConfig,
    admin_token: str | None,
    insecure_no_auth: bool = False,
    *,
    place: WorkerPlace | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM: alone on `router.host:port`, or as worker `place` of
    several on `sock`, its bound (not yet listening) share of the port."""
    settings = config.router
    # The router's own lines (failed operations, nodes marked down, 5xx and 413 replies) go
    # to stderr, which `pdfleet up` writes to the router's log file.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_bind(settings.host, admin_token, insecure_no_auth)
    app = create_app(config, admin_token, place)
    server = uvicorn.Server(uvicorn.Config(
        app,
        http=serving.protocol_class(app),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,  # nothing reads the client address; saves a layer per request
        timeout_graceful_shutdown=5,
        # Which worker answered: for operators and tests; a router of one process has none.
        headers=[] if place is None else [(WORKER_HEADER, str(place.index))],
    ))
    server.run(sockets=None if sock is None else [sock])
