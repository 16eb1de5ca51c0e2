"""405 replies that name every method a path takes.

Starlette answers a method no route takes with the `Allow` of the first route on that path
only; `/workers` has three (GET, POST, DELETE), so clients and the OpenAPI check would be told
GET alone.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.routing import Match


async def method_not_allowed(request: Request, _: Exception) -> JSONResponse:
    methods = sorted({
        method
        for route in request.app.routes
        if route.matches(request.scope)[0] is not Match.NONE
        for method in getattr(route, "methods", None) or ()
    })
    return JSONResponse({"detail": "Method Not Allowed"}, status_code=405,
                        headers={"Allow": ", ".join(methods)})
