"""Fast stub nodes for the proxy benchmark: a raw asyncio HTTP/1.1 server (uvloop, httptools)
whose replies are prebuilt bytes, so that the stub costs far less per request than any router
it stands behind.

    python scripts/bench_stub.py --prefill 1 --decode 1 --chunks 16 --chunk-gap-ms 1

Prints one line `READY {"prefill": [ports], "decode": [ports]}` once every port listens.
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


async def serve(prefill: int, decode: int, chunks: int, gap_s: float) -> None:
    loop = asyncio.get_running_loop()
    ports: dict[str, list[int]] = {"prefill": [], "decode": []}
    for role, count in (("prefill", prefill), ("decode", decode)):
        replies = Replies(role, chunks, gap_s)
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            server = await loop.create_server(
                lambda r=replies: StubConnection(r), sock=sock, backlog=4096)
            ports[role].append(server.sockets[0].getsockname()[1])
    print("READY " + json.dumps(ports), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefill", type=int, default=1)
    parser.add_argument("--decode", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-gap-ms", type=float, default=1.0)
    args = parser.parse_args()
    uvloop.run(serve(args.prefill, args.decode, args.chunks, args.chunk_gap_ms / 1000))


if __name__ == "__main__":
    main()
