"""Stub nodes for tests and benchmarks: one process serving many ports, each port a node
whose behaviour is set per route — delays, hangs, error bodies of any kind and size,
connections reset mid-reply — and can be changed at run time.

    python tests/stubs/stub_nodes.py --nodes 64 --delay 0.1
    python tests/stubs/stub_nodes.py --spec '[{"status": 500, "body": "text"}, {}]'
    python tests/stubs/stub_nodes.py --nodes 2 --engine vllm

Prints one line `READY {"ports": [...]}` once every port listens. A behaviour with
`"engine": "sglang" | "vllm"` answers the control and status routes exactly as that engine's
server does (tests/stubs/stub_engines.py; `"fail": "message"` makes them fail as that engine
fails), and the generation routes as below. Without it, each port answers:
- any POST route not listed below: by its behaviour (default: 200 JSON echo);
- `GET /is_sleeping`, `GET /get_server_info`: the stub's own sleep state (404 if
  `"status_routes": false`, like a plain SGLang server);
- weights: each stub serves a weight version (`"weight_version"`, default "default"; a
  behaviour put later that names none keeps it): `GET /get_weight_version`, and
  `weight_version` in `/get_server_info` and `GET /model_info`, as SGLang reports it;
  `POST /update_weights_from_disk` and `/update_weights_from_distributed` (when the behaviour
  does not fail them) take the body's `weight_version` (none: the version stays) and answer
  200 `{"success": true, "weight_version": v}`;
- `POST /generate`, `/v1/completions`, `/v1/chat/completions` (when the behaviour does
  not fail them): a reply in SGLang's / OpenAI's shape naming the stub (`served_by`) and
  the `bootstrap_room` it got; with `"stream": true` in the request, SSE of
  `stream_chunks` chunks (default 3) `chunk_delay` s apart, each padded with `chunk_pad`
  bytes if set, then `data: [DONE]`. With
  `"hold_last_chunk": true` the last chunk waits for `POST /_stub/release`. Each reply
  names the stub's weight version as a pdfleet node does: `meta_info.weight_version` on
  /generate, the `X-Pdfleet-Weight-Version` header on all three routes (not with
  `"version_header": false`, as SGLang, which reports its version but sends no such header);
- `GET /v1/models`, `GET /health`: a one-model list, 200;
- `GET /_stub/requests`: what it received (path, headers, body, and for generation
  `chunks_sent`, `completed`, `disconnected`: the client went away before the reply ended)
  so tests can check forwarding; `PUT /_stub/behavior`: replace its behaviour.
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

import stub_engines  # the sibling script: run as a script, its folder is on sys.path
from aiohttp import web

from pdfleet.vocabulary import WEIGHT_VERSION_HEADER

CHUNK = b"\xff\xfe\x00E" * 16384  # 64 KiB of bytes that are not UTF-8
TAGS = ["weights", "kv_cache", "cuda_graph", "weights_drafter"]
GENERATION_PATHS = ("/generate", "/v1/completions", "/v1/chat/completions")
# Not kept in /_stub/requests.
POLLED_PATHS = ("/is_sleeping", "/get_server_info", "/get_weight_version", "/model_info",
                "/health")
WEIGHT_UPDATE_PATHS = ("/update_weights_from_disk", "/update_weights_from_distributed")
MODEL = "stub-model"


def generation_reply(path: str, served_by: int, request: dict[str, Any],
                     weight_version: str | None) -> dict[str, Any]:
    """A finished generation in the route's shape."""
    base = {"served_by": served_by, "bootstrap_room": request.get("bootstrap_room")}
    if path == "/generate":
        return {**base, "text": "stub reply", "output_ids": [1, 2, 3], "meta_info": {
            "id": request.get("rid") or "stub", "prompt_tokens": 2, "completion_tokens": 3,
            "finish_reason": {"type": "length", "length": 3},
            "weight_version": weight_version}}
    usage = {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    if path == "/v1/completions":
        return {**base, "id": "cmpl-stub", "object": "text_completion", "created": 0,
                "model": MODEL, "usage": usage, "choices": [
                    {"index": 0, "text": "stub reply", "finish_reason": "length",
                     "logprobs": None}]}
    return {**base, "id": "chatcmpl-stub", "object": "chat.completion", "created": 0,
            "model": MODEL, "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "stub reply"},
                 "finish_reason": "length"}]}


def generation_chunk(path: str, served_by: int, index: int,
                     weight_version: str | None) -> dict[str, Any]:
    """Chunk `index` of a streamed generation in the route's shape."""
    token = f"tok{index} "
    if path == "/generate":
        return {"text": token, "index": index, "served_by": served_by,
                "meta_info": {"id": "stub", "completion_tokens": index + 1,
                              "weight_version": weight_version}}
    if path == "/v1/completions":
        return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": MODEL,
                "served_by": served_by,
                "choices": [{"index": 0, "text": token, "finish_reason": None}]}
    return {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
            "model": MODEL, "served_by": served_by,
            "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}


class StubNode:
    def __init__(self, behavior: dict[str, Any]) -> None:
        self.behavior = behavior
        self.received: list[dict[str, Any]] = []
        self.released: set[str] = set()
        # The pdfleet-shaped stub's version; an `engine:` stub keeps its own in engine_state.
        self.weight_version: str | None = behavior.get("weight_version", "default")
        self.engine_state = stub_engines.EngineState(weight_version=self.weight_version)
        self.last_chunk_released = asyncio.Event()

    def rule(self, path: str) -> dict[str, Any]:
        routes = self.behavior.get("routes", {})
        return {**self.behavior, **routes.get(path, {})}

    def track_state(self, path: str, body: bytes) -> None:
        """What a successful control call changes: the released tags, the weight version."""
        try:
            request = json.loads(body) if body.strip() else {}
        except ValueError:
            request = {}
        request = request if isinstance(request, dict) else {}
        tags = request.get("tags")
        if path in WEIGHT_UPDATE_PATHS and "weight_version" in request:
            self.weight_version = request["weight_version"]
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
            if "weight_version" in self.behavior:
                self.weight_version = self.behavior["weight_version"]
            return web.json_response({"ok": True})
        if path == "/_stub/release":
            self.last_chunk_released.set()
            return web.json_response({"ok": True})
        engine = self.behavior.get("engine")
        if engine and request.method == "GET" and path in POLLED_PATHS:
            return await self.answer(request, path, b"", {})
        if request.method == "GET" and path in ("/is_sleeping", "/get_server_info"):
            return self.status_reply(path)
        if request.method == "GET" and path == "/get_weight_version":
            return web.json_response({"weight_version": self.weight_version})
        if request.method == "GET" and path == "/model_info":
            return web.json_response({"model_path": MODEL, "is_generation": True,
                                      "weight_version": self.weight_version})
        if request.method == "GET" and path in ("/v1/models", "/health"):
            return web.json_response({"object": "list", "data": [
                {"id": MODEL, "object": "model", "owned_by": "stub"}]})
        body = await request.read()
        entry = {
            "method": request.method, "path": path, "query": request.query_string,
            "body": body.decode("latin-1"),
            "headers": {k.lower(): v for k, v in request.headers.items()}, "at": time.time(),
        }
        self.received.append(entry)
        try:
            return await self.answer(request, path, body, entry)
        except (asyncio.CancelledError, ConnectionError):
            entry["disconnected"] = True  # the client left before the reply ended
            raise

    async def answer(self, request: web.Request, path: str, body: bytes,
                     entry: dict[str, Any]) -> web.StreamResponse:
        rule = self.rule(path)
        if rule.get("delay"):
            await asyncio.sleep(rule["delay"])
        mode = rule.get("mode", "normal")
        if mode == "hang":
            await asyncio.Event().wait()
        status = int(rule.get("status", 200))
        if mode == "reset":
            return await self.reset(request, status)
        engine = self.behavior.get("engine")
        if engine and path not in GENERATION_PATHS:
            return self.engine_reply(engine, request, rule, body)
        if 200 <= status < 300:
            self.track_state(path, body)
        kind, size = rule.get("body", "echo"), int(rule.get("size", 0))
        if kind == "echo" and 200 <= status < 300 and path in GENERATION_PATHS:
            return await self.generate(request, rule, body, entry)
        return await self.reply(request, status, kind, size, body)

    async def generate(self, request: web.Request, rule: dict[str, Any], body: bytes,
                       entry: dict[str, Any]) -> web.StreamResponse:
        payload = json.loads(body)
        served_by = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        # Only pdfleet nodes (the default stub) name their version in the header.
        version = None if self.behavior.get("engine") else self.weight_version
        sends_header = version is not None and self.behavior.get("version_header", True)
        headers = {WEIGHT_VERSION_HEADER: version} if sends_header else {}
        if not payload.get("stream"):
            entry["completed"] = True
            return web.json_response(
                generation_reply(request.path, served_by, payload, version), headers=headers)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
        await resp.prepare(request)
        chunks = int(rule.get("stream_chunks", 3))
        entry["chunks_sent"] = 0
        for index in range(chunks):
            if index:
                await asyncio.sleep(float(rule.get("chunk_delay", 0)))
            if index == chunks - 1 and rule.get("hold_last_chunk"):
                await self.last_chunk_released.wait()
                self.last_chunk_released.clear()
            chunk = generation_chunk(request.path, served_by, index, version)
            if rule.get("chunk_pad"):
                chunk["pad"] = "x" * int(rule["chunk_pad"])
            data = json.dumps(chunk)
            await resp.write(f"data: {data}\n\n".encode())
            entry["chunks_sent"] = index + 1
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        entry["completed"] = True
        return resp

    def engine_reply(self, engine: str, request: web.Request, rule: dict[str, Any],
                     body: bytes) -> web.Response:
        fail = str(rule["fail"]) if rule.get("fail") else None
        return stub_engines.answer(engine, request, body, self.engine_state, fail)

    def status_reply(self, path: str) -> web.Response:
        if not self.behavior.get("status_routes", True):
            return web.json_response({"detail": "Not Found"}, status=404)
        tags = sorted(self.released)
        if path == "/is_sleeping":
            return web.json_response({"is_sleeping": bool(tags), "released_tags": tags})
        return web.json_response({
            "role": self.behavior.get("role", "stub"), "released_tags": tags, "inflight": 0,
            "memory": {"used_bytes": 0 if tags else 1 << 30, "total_bytes": 1 << 30},
            "weight_version": self.weight_version,
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
        if request.path in WEIGHT_UPDATE_PATHS:
            reply["weight_version"] = self.weight_version
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
    parser.add_argument("--engine", choices=sorted(stub_engines.ROUTES),
                        help="answer control routes as this engine's server does")
    args = parser.parse_args()
    engine = {"engine": args.engine} if args.engine else {}
    behaviors = json.loads(args.spec) if args.spec else [
        {"delay": args.delay, **engine} for _ in range(args.nodes)
    ]
    try:
        asyncio.run(serve(behaviors))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
