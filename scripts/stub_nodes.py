"""Stub nodes for tests and benchmarks: one process serving many ports, each port a node
whose behaviour is set per route — delays, hangs, error bodies of any kind and size,
connections reset mid-reply — and can be changed at run time.

    python scripts/stub_nodes.py --nodes 64 --delay 0.1
    python scripts/stub_nodes.py --spec '[{"status": 500, "body": "text"}, {}]'

Prints one line `READY {"ports": [...]}` once every port listens. Each port answers:
- any POST route not listed below: by its behaviour (default: 200 JSON echo);
- `GET /is_sleeping`, `GET /get_server_info`: the stub's own sleep state (404 if
  `"status_routes": false`, like a plain SGLang server);
- `GET /_stub/requests`: what it received (path, headers, body) so tests can check
  forwarding; `PUT /_stub/behavior`: replace its behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from typing import Any

from aiohttp import web

CHUNK = b"\xff\xfe\x00E" * 16384  # 64 KiB of bytes that are not UTF-8
TAGS = ["weights", "kv_cache", "cuda_graph", "weights_drafter"]


class StubNode:
    def __init__(self, behavior: dict[str, Any]) -> None:
        self.behavior = behavior
        self.received: list[dict[str, Any]] = []
        self.released: set[str] = set()

    def rule(self, path: str) -> dict[str, Any]:
        routes = self.behavior.get("routes", {})
        return {**self.behavior, **routes.get(path, {})}

    def track_sleep(self, path: str, body: bytes) -> None:
        try:
            tags = json.loads(body).get("tags") if body.strip() else None
        except (ValueError, AttributeError):
            tags = None
        if path.endswith(("release_memory_occupation", "sleep")):
            self.released |= set(tags or TAGS)
        elif path.endswith(("resume_memory_occupation", "wake_up")):
            self.released = set() if tags is None else self.released - set(tags)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/_stub/requests":
            return web.json_response(self.received)
        if path == "/_stub/behavior":
            self.behavior = await request.json()
            return web.json_response({"ok": True})
        if request.method == "GET" and path in ("/is_sleeping", "/get_server_info"):
            return self.status_reply(path)
        body = await request.read()
        self.received.append({
            "path": path, "query": request.query_string, "body": body.decode("latin-1"),
            "headers": {k.lower(): v for k, v in request.headers.items()}, "at": time.time(),
        })
        rule = self.rule(path)
        if rule.get("delay"):
            await asyncio.sleep(rule["delay"])
        mode = rule.get("mode", "normal")
        if mode == "hang":
            await asyncio.Event().wait()
        status = int(rule.get("status", 200))
        if mode == "reset":
            return await self.reset(request, status)
        if 200 <= status < 300:
            self.track_sleep(path, body)
        kind, size = rule.get("body", "echo"), int(rule.get("size", 0))
        return await self.reply(request, status, kind, size, body)

    def status_reply(self, path: str) -> web.Response:
        if not self.behavior.get("status_routes", True):
            return web.json_response({"detail": "Not Found"}, status=404)
        tags = sorted(self.released)
        if path == "/is_sleeping":
            return web.json_response({"is_sleeping": bool(tags), "released_tags": tags})
        return web.json_response({
            "role": self.behavior.get("role", "stub"), "released_tags": tags, "inflight": 0,
            "memory": {"used_bytes": 0 if tags else 1 << 30, "total_bytes": 1 << 30},
        })

    async def reply(self, request: web.Request, status: int, kind: str, size: int,
                    received: bytes) -> web.StreamResponse:
        if kind == "empty" or status == 204:
            return web.Response(status=status)
        if kind == "text":
            text = ("node error " * (size // 11 + 1))[: size or 40]
            return web.Response(status=status, text=text)
        if kind == "json":
            return web.json_response({"error": "node failed", "code": status}, status=status)
        if kind == "binary":
            data = (CHUNK * (size // len(CHUNK) + 1))[: size or 4096]
            return web.Response(status=status, body=data, content_type="application/octet-stream")
        if kind == "huge":  # streamed, never held whole, so the stub can send gigabytes
            resp = web.StreamResponse(status=status, headers={"Content-Length": str(size)})
            await resp.prepare(request)
            sent = 0
            try:
                while sent < size:
                    piece = CHUNK[: min(len(CHUNK), size - sent)]
                    await resp.write(piece)
                    sent += len(piece)
            except (ConnectionResetError, ConnectionError):
                pass
            return resp
        reply: dict[str, Any] = {"success": status < 300, "path": request.path,
                                 "request_id": request.headers.get("X-Request-Id")}
        if request.path.endswith(("release_memory_occupation", "resume_memory_occupation")):
            reply["released_tags"] = sorted(self.released)
            reply["freed_bytes"] = 1 << 20
        reply["received_bytes"] = len(received)
        return web.json_response(reply, status=status)

    async def reset(self, request: web.Request, status: int) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Length": "100000"})
        await resp.prepare(request)
        await resp.write(b'{"partial": ')
        assert request.transport is not None
        request.transport.abort()  # the reply stops mid-body, as when a node dies
        return resp


def listen_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def serve(behaviors: list[dict[str, Any]]) -> None:
    ports = []
    runners = []
    for behavior in behaviors:
        stub = StubNode(behavior)
        server = web.Server(stub.handle, handler_cancellation=True)
        runner = web.ServerRunner(server, access_log=None)
        await runner.setup()
        sock = listen_socket()
        await web.SockSite(runner, sock).start()
        ports.append(sock.getsockname()[1])
        runners.append(runner)
    print("READY " + json.dumps({"ports": ports, "pid": os.getpid()}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for runner in runners:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", help="JSON list of per-node behaviours")
    parser.add_argument("--nodes", type=int, default=1, help="nodes with the default behaviour")
    parser.add_argument("--delay", type=float, default=0.0, help="per-request delay (s)")
    args = parser.parse_args()
    behaviors = json.loads(args.spec) if args.spec else [
        {"delay": args.delay} for _ in range(args.nodes)
    ]
    try:
        asyncio.run(serve(behaviors))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
