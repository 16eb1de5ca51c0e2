"""A real fleet end to end: one prefill and one decode node behind the router, driven by the
official `openai` client, against a mixed node serving the same model on its own.

The PD hand-off must be invisible in the tokens: a request through the pair gives exactly
what the mixed node gives, streamed or not, with `n` choices, and again after the whole fleet
slept and woke. It must be invisible in errors too: a request both nodes refuse reads the same
whichever answered first (the other is held back by a delay fault rule).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
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
    prefill_url: str
    decode_url: str

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
    prefill, prefill_url = start_cpu_node("prefill", "--bootstrap-port", str(bootstrap_port),
                                          "--enable-fault-injection")
    decode, decode_url = start_cpu_node("decode", "--enable-fault-injection")
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
        yield Fleet(router, mixed_url, prefill_url, decode_url)
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


def post_json(url: str, body: Any, method: str = "POST") -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


def generate_ids(base: str) -> list[int]:
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0}}
    return post_json(f"{base}/generate", body)["output_ids"]


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


def test_n_chat_choices_through_pd_each_equal_the_mixed_node(fleet):
    messages: Any = [{"role": "user", "content": PROMPT}]
    reply = fleet.through_pd.chat.completions.create(
        model=model_of(fleet.through_pd), messages=messages, max_tokens=MAX_TOKENS,
        temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert [c.message.content for c in reply.choices] == [chat(fleet.alone)] * 2
    assert reply.usage is not None and reply.usage.completion_tokens == 2 * MAX_TOKENS


def test_n_completion_choices_through_pd_each_equal_the_mixed_node(fleet):
    reply = fleet.through_pd.completions.create(
        model=model_of(fleet.through_pd), prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
        n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.text for c in reply.choices] == [complete(fleet.alone)] * 3
    assert reply.usage is not None and reply.usage.completion_tokens == 3 * MAX_TOKENS


TRIES = 12
OVER_CONTEXT = 5000  # prompt plus max_tokens over the tiny model's 1024-token context
CHAT: Any = [{"role": "user", "content": PROMPT}]

# Requests both nodes refuse, each as an OpenAI client sends it: (route, send, status, words).
Refusal = tuple[str, Callable[[openai.OpenAI], object], int, str]
REFUSALS: dict[str, Refusal] = {
    "chat over the context": (
        "/v1/chat/completions",
        lambda c: c.chat.completions.create(model=model_of(c), messages=CHAT,
                                            max_tokens=OVER_CONTEXT),
        400, "exceeds the context of 1024 tokens"),
    "streamed chat over the context": (
        "/v1/chat/completions",
        lambda c: c.chat.completions.create(model=model_of(c), messages=CHAT,
                                            max_tokens=OVER_CONTEXT, stream=True),
        400, "exceeds the context of 1024 tokens"),
    "a 200 KiB prompt": (
        "/v1/completions",
        lambda c: c.completions.create(model=model_of(c), prompt="x" * (200 << 10),
                                       max_tokens=4),
        400, "exceeds the context of 1024 tokens"),
    "a negative max_tokens": (
        "/v1/completions",
        lambda c: c.completions.create(model=model_of(c), prompt=PROMPT, max_tokens=-1),
        400, "max_tokens"),
    "a model the fleet does not serve": (
        "/v1/chat/completions",
        lambda c: c.chat.completions.create(model="gpt-4", messages=CHAT),
        404, "The model `gpt-4` does not exist."),
}


def held_back(fleet: Fleet, first: str) -> str:
    """The node URL that answers after `first` (a role) does."""
    return fleet.decode_url if first == "prefill" else fleet.prefill_url


@pytest.mark.parametrize("case", REFUSALS)
def test_a_request_both_nodes_refuse_reads_the_same_whichever_answers_first(fleet, case):
    route, send, status, words = REFUSALS[case]
    seen: dict[str, set[tuple[int, str, str]]] = {}
    for first in ("prefill", "decode"):
        late = held_back(fleet, first)
        post_json(f"{late}/_admin/faults", {"route": route, "kind": "delay", "seconds": 0.3})
        try:
            seen[first] = set()
            for _ in range(TRIES):
                with pytest.raises(openai.APIStatusError) as refused:
                    send(fleet.through_pd)
                error = refused.value.body
                assert isinstance(error, dict)
                seen[first].add((refused.value.status_code, error["message"], error["role"]))
        finally:
            post_json(f"{late}/_admin/faults", {}, method="DELETE")
    for first, answers in seen.items():
        ((code, message, role),) = answers
        assert (code, role) == (status, first) and words in message
    assert {(c, m) for c, m, _ in seen["prefill"]} == {(c, m) for c, m, _ in seen["decode"]}


@pytest.mark.parametrize(("body", "words"), [
    ({"sampling_params": {"max_new_tokens": 4}}, "send exactly one of text or input_ids"),
    ({"text": "x", "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
])
def test_generate_refusals_are_openai_errors_with_the_nodes_reason(fleet, body, words):
    with pytest.raises(urllib.error.HTTPError) as refused:
        post_json(f"{fleet.router.url}/generate", body)
    assert refused.value.code == 400
    error = json.loads(refused.value.read())["error"]
    assert error["code"] == error["status"] == 400 and error["type"] == "BadRequestError"
    assert words in error["message"]
