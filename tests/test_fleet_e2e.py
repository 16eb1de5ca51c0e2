"""A real fleet end to end: one prefill and one decode node behind the router, driven by the
official `openai` client, against a mixed node serving the same model on its own.

The PD hand-off must be invisible in the tokens: a request through the pair gives exactly
what the mixed node gives, streamed or not, and again after the whole fleet slept and woke.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.procs import Router, free_port, start_cpu_node, wait_http_ok

pytestmark = pytest.mark.timeout(120)

PROMPT = "The fleet sleeps between rollouts and"
MAX_TOKENS = 12


@dataclass
class Fleet:
    router: Router
    mixed_url: str

    def client(self, base: str) -> openai.OpenAI:
        # No client retries: a 503 must surface, not be retried away.
        return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0,
                             timeout=60)

    @property
    def through_pd(self) -> openai.OpenAI:
        return self.client(self.router.url)

    @property
    def alone(self) -> openai.OpenAI:
        return self.client(self.mixed_url)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    bootstrap_port = free_port()
    prefill, prefill_url = start_cpu_node("prefill", "--bootstrap-port", str(bootstrap_port))
    decode, decode_url = start_cpu_node("decode")
    mixed, mixed_url = start_cpu_node("mixed")
    nodes = [(prefill, prefill_url), (decode, decode_url), (mixed, mixed_url)]
    router = None
    try:
        for process, url in nodes:
            wait_http_ok(f"{url}/health", process, timeout=90)
        router = Router(tmp_path_factory.mktemp("fleet"), [
            {"url": prefill_url, "role": "prefill", "bootstrap_port": bootstrap_port},
            {"url": decode_url, "role": "decode"},
        ])
        yield Fleet(router, mixed_url)
    finally:
        if router is not None:
            router.stop()
        for process, _ in nodes:
            process.stop()


def model_of(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def complete(client: openai.OpenAI) -> str:
    reply = client.completions.create(model=model_of(client), prompt=PROMPT,
                                      max_tokens=MAX_TOKENS, temperature=0)
    return reply.choices[0].text or ""


def chat(client: openai.OpenAI, stream: bool = False) -> str:
    messages: Any = [{"role": "user", "content": PROMPT}]
    if not stream:
        reply = client.chat.completions.create(model=model_of(client), messages=messages,
                                               max_tokens=MAX_TOKENS, temperature=0)
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model_of(client), messages=messages,
                                            max_tokens=MAX_TOKENS, temperature=0, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def complete_streamed(client: openai.OpenAI) -> tuple[str, int]:
    """The streamed text and the number of chunks it came in."""
    chunks = list(client.completions.create(model=model_of(client), prompt=PROMPT,
                                            max_tokens=MAX_TOKENS, temperature=0,
                                            stream=True))
    return "".join(c.choices[0].text for c in chunks if c.choices), len(chunks)


def generate_ids(base: str) -> list[int]:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0}}
    request = urllib.request.Request(f"{base}/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())["output_ids"]


def test_models_are_listed_through_the_router(fleet):
    assert model_of(fleet.through_pd) == model_of(fleet.alone)


def test_completion_through_pd_equals_the_mixed_node(fleet):
    text = complete(fleet.through_pd)
    assert text and text == complete(fleet.alone)


def test_chat_through_pd_equals_the_mixed_node(fleet):
    text = chat(fleet.through_pd)
    assert text and text == chat(fleet.alone)


def test_streamed_completion_through_pd_equals_the_mixed_node(fleet):
    text, chunks = complete_streamed(fleet.through_pd)
    assert chunks > 1 and text == complete(fleet.alone)


def test_streamed_chat_through_pd_equals_the_mixed_node(fleet):
    assert chat(fleet.through_pd, stream=True) == chat(fleet.alone)


def test_generate_through_pd_gives_the_mixed_node_tokens(fleet):
    ids = generate_ids(fleet.router.url)
    assert len(ids) == MAX_TOKENS and ids == generate_ids(fleet.mixed_url)


def control(router_url: str, operation: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{router_url}/{operation}", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_sleep_wake_cycle_keeps_tokens_and_refuses_generation_while_asleep(fleet):
    before = complete(fleet.through_pd)
    asleep = control(fleet.router.url, "release_memory_occupation")
    try:
        assert asleep["total"] == 2 and asleep["succeeded"] == 2
        with pytest.raises(openai.APIStatusError) as refused:
            complete(fleet.through_pd)
        assert refused.value.status_code == 503
        assert "sleeping" in str(refused.value.message)
        assert int(refused.value.response.headers["Retry-After"]) >= 1
    finally:
        control(fleet.router.url, "resume_memory_occupation")
    assert complete(fleet.through_pd) == before
    assert chat(fleet.through_pd, stream=True) == chat(fleet.alone)
