"""The generation routes' HTTP layer (router/serving.py): HTTP/1.1 as clients use it —
keep-alive, pipelining, `Expect: 100-continue`, wrong method — on a real router over stub
nodes, spoken over a raw socket so nothing hides what goes on the wire."""

from __future__ import annotations

import asyncio
import json

import pytest

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
