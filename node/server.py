"""The node's HTTP server: `create_app` builds the FastAPI app, `serve` runs it.

A prefill node also listens on its bootstrap port (node.pd.bootstrap), served from the same
event loop so the hand-off store is shared without locks; it starts and stops with the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator

import uvicorn
from fastapi import FastAPI

from node.api import generate, memory, openai, refit, status
from node.faults.admin import admin_router
from node.faults.inject import FaultMiddleware, FaultProtocol
from node.http.errors import install_error_handlers
from node.http.weight_version import WeightVersionHeader
from node.metrics import GenerationCounting
from node.options import NodeOptions
from node.pd.bootstrap import create_bootstrap_app
from node.runtime import NodeRuntime


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server run inside another's event loop: the outer server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listening_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


@contextlib.asynccontextmanager
async def _bootstrap_listener(runtime: NodeRuntime) -> AsyncIterator[None]:
    options = runtime.options
    if runtime.handoffs is None or options.bootstrap_port is None:
        yield
        return
    # Bound before the main port answers /health, so a ready node's bootstrap port is too.
    sock = _listening_socket(options.host, options.bootstrap_port)
    config = uvicorn.Config(
        create_bootstrap_app(runtime.handoffs),
        log_level=options.log_level,
        access_log=False,
        # A decode node's long poll must not hold up shutdown.
        timeout_graceful_shutdown=1,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield
    finally:
        server.should_exit = True
        await task
        sock.close()


def create_app(options: NodeOptions, runtime: NodeRuntime | None = None) -> FastAPI:
    runtime = runtime or NodeRuntime(options)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with _bootstrap_listener(runtime):
            yield
        await runtime.aclose()

    app = FastAPI(title="pdfleet node", lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app)
    app.add_middleware(GenerationCounting, metrics=runtime.metrics)
    app.add_middleware(WeightVersionHeader, version=lambda: runtime.controller.weight_version)
    for module in (generate, openai, memory, status, refit):
        app.include_router(module.router)
    if runtime.faults is not None:
        app.add_middleware(FaultMiddleware, faults=runtime.faults)
        app.include_router(admin_router(runtime.faults, options.admin_token))
    return app


def serve(options: NodeOptions) -> None:
    """Load the model, then serve until SIGINT/SIGTERM."""
    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    app = create_app(options)
    uvicorn.run(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=False,
        http=FaultProtocol if options.enable_fault_injection else "auto",
        # Streams still open at shutdown are cut after this long rather than waited for.
        timeout_graceful_shutdown=5,
    )
