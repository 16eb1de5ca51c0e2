"""The fake API server is faithful to what the discovery code relies on: checked with
lightkube's own list and watch calls, the client the router uses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Pod

from router.discovery.selectors import parse_selector
from tests.kubernetes.fake_apiserver import FakeApiServer

pytestmark = pytest.mark.timeout(30)
NAMESPACE = "rl"


@pytest.fixture
async def client(fake_api: FakeApiServer) -> AsyncIterator[AsyncClient]:
    kube = AsyncClient(config=KubeConfig.from_dict(fake_api.kubeconfig(NAMESPACE)))
    yield kube
    await kube.close()


def names(pods: list[Pod]) -> list[str]:
    return sorted(p.metadata.name for p in pods)


async def next_events(stream: AsyncIterator[tuple[str, Pod]], count: int) -> list[tuple[str, str]]:
    return [(event, pod.metadata.name) for event, pod in [await anext(stream)
                                                           for _ in range(count)]]


def add(fake: FakeApiServer, name: str, **labels: str) -> dict[str, Any]:
    return fake.add_pod(name, labels, namespace=NAMESPACE, ready=True)


async def test_list_filters_by_equality_and_set_selectors(fake_api, client):
    add(fake_api, "p0", app="sglang", role="prefill")
    add(fake_api, "d0", app="sglang", role="decode")
    add(fake_api, "d1", app="sglang", role="decode", canary="yes")
    add(fake_api, "x0", app="other", role="decode")
    fake_api.add_pod("elsewhere", {"app": "sglang", "role": "decode"}, namespace="other")
    for text, expected in [
        ("app=sglang,role=decode", ["d0", "d1"]),
        ("app=sglang,role in (prefill,decode),!canary", ["d0", "p0"]),
        ("app!=sglang", ["x0"]),
        ("role notin (decode)", ["p0"]),
        ("canary", ["d1"]),
    ]:
        listing = client.list(Pod, namespace=NAMESPACE, labels=parse_selector(text).labels())
        assert names([p async for p in listing]) == expected, text
        assert listing.resourceVersion == str(fake_api.version)


async def test_watch_from_the_list_version_streams_each_change(fake_api, client):
    add(fake_api, "d0", app="sglang")
    listing = client.list(Pod, namespace=NAMESPACE, labels=[("app", None)])
    assert names([p async for p in listing]) == ["d0"]
    stream = aiter(client.watch(Pod, namespace=NAMESPACE, labels={"app": "sglang"},
                                resource_version=listing.resourceVersion))
    add(fake_api, "d1", app="sglang")  # before the watch connects: replayed from history
    assert await next_events(stream, 1) == [("ADDED", "d1")]
    fake_api.set_ready("d0", False, namespace=NAMESPACE)
    fake_api.delete_pod("d1", namespace=NAMESPACE)
    fake_api.label("d0", {"app": "moved"}, namespace=NAMESPACE)  # no longer selected
    add(fake_api, "x0", app="other")  # never selected: no event
    fake_api.label("x0", {"app": "sglang"}, namespace=NAMESPACE)  # selected now
    events = await next_events(stream, 4)
    assert events == [("MODIFIED", "d0"), ("DELETED", "d1"), ("DELETED", "d0"),
                      ("ADDED", "x0")]
    await stream.aclose()


async def test_a_too_old_version_is_an_error_event_of_code_410(fake_api, client):
    add(fake_api, "d0", app="sglang")
    old = str(fake_api.version)
    add(fake_api, "d1", app="sglang")
    fake_api.forget_history()
    with pytest.raises(ApiError) as gone:
        async for _ in client.watch(Pod, namespace=NAMESPACE, resource_version=old):
            pass
    assert gone.value.status.code == 410
    assert gone.value.status.reason == "Expired"


async def test_a_too_old_version_as_an_http_410(client):
    fake = await FakeApiServer(gone_as_http=True).start()
    try:
        kube = AsyncClient(config=KubeConfig.from_dict(fake.kubeconfig(NAMESPACE)))
        fake.add_pod("d0", {}, namespace=NAMESPACE)
        fake.forget_history()
        with pytest.raises(httpx2.HTTPStatusError) as gone:
            async for _ in kube.watch(Pod, namespace=NAMESPACE, resource_version="1"):
                pass
        assert gone.value.response.status_code == 410
        await kube.close()
    finally:
        await fake.stop()


async def test_error_replies_are_status_objects_lightkube_reads(fake_api, client):
    fake_api.fail_next(1, 503)
    with pytest.raises(ApiError) as failed:
        _ = [p async for p in client.list(Pod, namespace=NAMESPACE)]
    assert failed.value.status.code == 503
    with pytest.raises(ApiError) as bad:
        _ = [p async for p in client.list(Pod, namespace=NAMESPACE,
                                          labels={"app": "has space"})]
    assert bad.value.status.code == 400


async def test_a_watch_cut_mid_event_fails_the_stream(fake_api, client):
    since = str(fake_api.version)
    add(fake_api, "d0", app="sglang")
    stream = aiter(client.watch(Pod, namespace=NAMESPACE, resource_version=since))
    assert await next_events(stream, 1) == [("ADDED", "d0")]
    fake_api.cut_watches()
    with pytest.raises(httpx2.HTTPError):
        await anext(stream)
