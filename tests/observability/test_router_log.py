"""The router's log (its stderr, which `pdfleet up` keeps in router.log) has one WARNING line
per failure a person must be able to find later, and nothing per successful request."""

from __future__ import annotations

import json

import pytest

from tests.procs import closed_port, eventually

pytestmark = pytest.mark.timeout(60)

BODY_LIMIT = 4096


async def test_failures_leave_one_line_each_and_successes_none(stub_nodes, router, http):
    stubs = stub_nodes([
        {"routes": {"/release_memory_occupation": {"status": 500, "body": "binary"}}},
        {"routes": {"/generate": {"status": 500, "body": "text"}}},
    ])
    dead = f"http://127.0.0.1:{closed_port()}"
    r = router([{"url": stubs.urls[0], "role": "prefill"},
                {"url": stubs.urls[1], "role": "mixed"},
                {"url": dead, "role": "decode"}], max_body_bytes=BODY_LIMIT)

    def lines(text: str) -> list[str]:
        return [line for line in r.process.output().splitlines() if text in line]

    async def logged(text: str) -> bool:
        return bool(lines(text))

    await eventually(lambda: logged(f"node {dead} marked down"))
    for _ in range(5):
        async with http.get(f"{r.url}/cluster/status") as resp:
            assert resp.status == 200
    async with http.post(f"{r.url}/release_memory_occupation", json={}) as resp:
        assert resp.status == 502
    async with http.post(f"{r.url}/generate", json={"text": "hi"}) as resp:
        assert resp.status >= 500
    async with http.post(f"{r.url}/generate", data=json.dumps({"text": "x" * BODY_LIMIT}),
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413

    async with http.post(f"{r.url}/flush_cache", data=b"{" + b" " * BODY_LIMIT + b"}",
                         headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 413

    await eventually(lambda: logged("/generate answered 413"))
    await eventually(lambda: logged("/flush_cache answered 413"))
    await eventually(lambda: logged("/generate answered 5"))
    [failed_release] = lines("release_memory_occupation")
    assert "WARNING" in failed_release and stubs.urls[0] in failed_release
    assert "bytes, not text>" in failed_release and "\ufffd" not in failed_release
    assert len(lines("marked down")) == 1  # once per outage, not once per poll
    assert len(lines("answered")) == 3
    assert not lines("cluster/status")
