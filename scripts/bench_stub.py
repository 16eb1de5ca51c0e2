"""Fast stub nodes for the proxy benchmark: a raw asyncio HTTP/1.1 server (uvloop, httptools)
whose replies are prebuilt bytes, so that the stub costs far less per request than any router
it stands behind.

    python scripts/bench_stub.py --prefill 1 --decode 1 --chunks 16 --chunk-gap-ms 1
        [--processes 1]

Prints one line `READY {"prefill": [ports], "decode": [ports]}` once every port listens.
`--processes N` serves every port from N processes (one listening socket each, SO_REUSEPORT,
so the kernel spreads new connections over them), process i pinned to the i-th CPU this one
may run on (cycling), so that one process's event loop does not cap a many-core benchmark.
Every GET answers 200 with a one-model list (health checks, model discovery). A POST answers
in the route's shape (`/generate` as SGLang, the rest as an OpenAI completion); a request
with `"stream": true` gets SSE: a decode node sends `--chunks` events `--chunk-gap-ms` apart
and `data: [DONE]`, a prefill node one event and `data: [DONE]` at once. Bootstrap fields
are neither required nor checked, so routers that do not add them (vLLM's PD mode) work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
from typing import Any, cast

import httptools
import uvloop

MODELS = json.dumps({"object": "list", "data": [
    {"id": "stub-model", "object": "model", "owned_by": "stub"}]}).encode()


def _response(body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(payload: dict[str, Any]) -> bytes:
    return _chunk(b"data: " + json.dumps(payload).encode() + b"\n\n")


def _completion(route: bytes, text: str) -> dict[str, Any]:
    if route == b"/generate":
        return {"text": text, "output_ids": [1] * 16, "meta_info": {
            "id": "stub", "prompt_tokens": 8, "completion_tokens": 16,
            "finish_reason": {"type": "length", "length": 16}}}
    return {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": "stub-model",
            "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": None}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 16, "total_tokens": 24}}


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
               b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
STREAM_END = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
ROUTES = (b"/generate", b"/v1/completions", b"/v1/chat/completions")
BACKLOG = 4096


class Replies:
    """Every byte a node of one role sends, built once."""

    def __init__(self, role: str, chunks: int, gap_s: float) -> None:
        self.gap_s = gap_s
        self.models = _response(MODELS)
        self.unary = {r: _response(json.dumps(_completion(r, "tok " * 16)).encode())
                      for r in ROUTES}
        events = chunks if role == "decode" else 1
        self.chunks = {r: [_event(_completion(r, "tok ")) for _ in range(events)]
                       for r in ROUTES}


class StubConnection(asyncio.Protocol):
    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.get_method() != b"POST":
            self.transport.write(self.replies.models)
            return
        route = self.url.split(b"?", 1)[0]
        route = route if route in self.replies.unary else b"/v1/completions"
        body = b"".join(self.body)
        if b'"stream":true' in body or b'"stream": true' in body:
            asyncio.get_running_loop().create_task(self.stream(route))
        else:
            self.transport.write(self.replies.unary[route])

    async def stream(self, route: bytes) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(STREAM_HEAD)
        for index, event in enumerate(self.replies.chunks[route]):
            if index and self.replies.gap_s:
                await asyncio.sleep(self.replies.gap_s)
            if transport.is_closing():
                return
            transport.write(event)
        transport.write(STREAM_END)


def listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(BACKLOG)
    return sock


def bind_all(prefill: int, decode: int, processes: int) -> list[list[tuple[str, socket.socket]]]:
    """Every process's listening sockets, as (role, socket), all bound and listening before
    any process starts, so that READY means every process takes connections."""
    first = [(role, listen(0)) for role, count in (("prefill", prefill), ("decode", decode))
             for _ in range(count)]
    return [first] + [[(role, listen(sock.getsockname()[1])) for role, sock in first]
                      for _ in range(processes - 1)]


async def serve(sockets: list[tuple[str, socket.socket]], chunks: int, gap_s: float) -> None:
    loop = asyncio.get_running_loop()
    replies = {role: Replies(role, chunks, gap_s) for role in ("prefill", "decode")}
    for role, sock in sockets:
        await loop.create_server(lambda r=replies[role]: StubConnection(r), sock=sock,
                                 backlog=BACKLOG)
    await asyncio.Event().wait()


def run_process(index: int, sockets: list[list[tuple[str, socket.socket]]], chunks: int,
                gap_s: float) -> None:
    """Serve process `index`'s sockets, closing the other processes' copies."""
    if len(sockets) > 1:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})
    for other, own in enumerate(sockets):
        if other != index:
            for _, sock in own:
                sock.close()
    uvloop.run(serve(sockets[index], chunks, gap_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=1)
    parser.add_argument("--decode", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-gap-ms", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=1,
                        help="processes serving every port (SO_REUSEPORT)")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    sockets = bind_all(args.prefill, args.decode, args.processes)
    ports: dict[str, list[int]] = {"prefill": [], "decode": []}
    for role, sock in sockets[0]:
        ports[role].append(sock.getsockname()[1])
    for index in range(1, args.processes):
        if os.fork() == 0:  # the child serves its sockets until the process group is ended
            try:
                run_process(index, sockets, args.chunks, args.chunk_gap_ms / 1000)
            finally:
                os._exit(1)
    print("READY " + json.dumps(ports), flush=True)
    run_process(0, sockets, args.chunks, args.chunk_gap_ms / 1000)


if __name__ == "__main__":
    main()
