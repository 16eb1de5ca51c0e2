"""The generation routes' HTTP layer (router/serving.py): HTTP/1.1 as clients use it —
keep-alive, pipelining, `Expect: 100-continue`, wrong method — on a real router over stub
nodes, spoken over a raw socket so nothing hides what goes on the wire; and the private
uvicorn API it is built on, checked so that a uvicorn change fails here, not in production."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from router.serving import UnsupportedUvicorn, missing_uvicorn_api, protocol_class
from tests.router.pd_support import pd_fleet

pytestmark = pytest.mark.timeout(60)

BODY = json.dumps({"text": "hi", "sampling_params": {"max_new_tokens": 2}}).encode()


def post(path: str = "/generate", body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (b"POST %b HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n%b\r\n" % (path.encode(), len(body), extra)) + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


@pytest.fixture
def fleet_router(stub_nodes, router):
    stubs = stub_nodes([{}, {}])
    return router(pd_fleet([stubs.urls[0]], [stubs.urls[1]]))


async def test_generation_connection_is_kept_alive_between_requests(fleet_router):
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet_router.port)
    try:
        for _ in range(3):
            writer.write(post())
            status, headers, body = await read_reply(reader)
            assert status == 200 and "connection" not in headers
            assert json.loads(body)
    finally:
        writer.close()


async def test_pipelined_generation_requests_are_answered_in_order(fleet_router):
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet_router.port)
    try:
        writer.write(post("/generate") + post("/v1/completions", b"{not json")
                     + post("/generate"))
        statuses = [(await read_reply(reader))[0] for _ in range(3)]
        assert statuses == [200, 400, 200]
    finally:
        writer.close()


async def test_expect_100_continue_gets_continue_then_the_reply(fleet_router):
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet_router.port)
    try:
        head = post(extra=b"Expect: 100-continue\r\n")[: -len(BODY)]
        writer.write(head)
        assert (await reader.readline()).startswith(b"HTTP/1.1 100")
        assert await reader.readline() == b"\r\n"
        writer.write(BODY)
        status, _, _ = await read_reply(reader)
        assert status == 200
    finally:
        writer.close()


async def test_generation_route_with_another_method_is_405_naming_post(fleet_router):
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet_router.port)
    try:
        writer.write(b"GET /v1/chat/completions HTTP/1.1\r\nHost: router\r\n\r\n")
        status, headers, body = await read_reply(reader)
        assert status == 405 and headers["allow"] == "POST"
        assert json.loads(body)["error"]["message"] == "/v1/chat/completions takes POST"
    finally:
        writer.close()


def test_the_installed_uvicorn_has_the_private_api_the_generation_routes_use() -> None:
    assert missing_uvicorn_api() == []
    protocol = protocol_class(FastAPI())
    assert issubclass(protocol, HttpToolsProtocol)
    assert protocol._start_asgi_task is not HttpToolsProtocol._start_asgi_task


@pytest.mark.parametrize(("cls", "name"), [(HttpToolsProtocol, "_start_asgi_task"),
                                           (RequestResponseCycle, "on_response")])
def test_a_uvicorn_without_that_api_is_refused_at_start(monkeypatch, cls, name) -> None:
    # A uvicorn of another shape, as far as the router can tell.
    if name in cls.__dict__:
        monkeypatch.delattr(cls, name)
    else:
        init = cls.__init__
        monkeypatch.setattr(cls, "__init__", lambda self, *a, **k: init(self, *a, **k))
    with pytest.raises(UnsupportedUvicorn, match=f"{cls.__name__}.{name}"):
        protocol_class(FastAPI())


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
async def test_generation_through_pdfleet_router_is_served_by_the_direct_path(fleet_router, path):
    # The app's own declarations of these routes (generation_docs) fail with a 500: the
    # node's reply can come only from the direct path.
    reader, writer = await asyncio.open_connection("127.0.0.1", fleet_router.port)
    try:
        writer.write(post(path))
        status, headers, body = await read_reply(reader)
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert "served_by" in json.loads(body)  # what the stub node answered
    finally:
        writer.close()
