"""The node's OpenAI routes as an OpenAI client sees them: errors in OpenAI's shape, `n`
choices per prompt, and 404 for a model the node does not serve."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from tests.node.conftest import NodeProcess

pytestmark = pytest.mark.timeout(60)

MODEL = "pdfleet-tiny"
MESSAGES: Any = [{"role": "user", "content": "choices"}]


@pytest.fixture
async def client(mixed_node: NodeProcess) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{mixed_node.url}/v1", api_key="unused",
                           max_retries=0) as client:
        yield client


async def test_a_refused_request_is_an_openai_error_with_the_nodes_reason(
        client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5000)
    assert "exceeds the context of 1024 tokens" in refused.value.message
    assert refused.value.body == {"message": refused.value.body["message"],  # type: ignore[index]
                                  "type": "BadRequestError", "code": 400}


async def test_an_invalid_field_is_an_openai_error_naming_it(
        http: aiohttp.ClientSession, mixed_node: NodeProcess) -> None:
    async with http.post(f"{mixed_node.url}/v1/completions",
                         json={"prompt": "x", "max_tokens": -1}) as reply:
        assert reply.status == 400
        error = (await reply.json())["error"]
    assert error["type"] == "BadRequestError" and error["code"] == 400
    assert "max_tokens" in error["message"]


async def test_an_unknown_model_is_404_as_vllm_answers_it(
        http: aiohttp.ClientSession, mixed_node: NodeProcess, client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    async with http.post(f"{mixed_node.url}/v1/chat/completions",
                         json={"model": "gpt-4", "messages": MESSAGES}) as reply:
        assert reply.status == 404
        assert await reply.json() == {"error": {
            "message": "The model `gpt-4` does not exist.", "type": "NotFoundError",
            "code": 404}}


async def test_no_model_or_the_served_one_is_answered(
        http: aiohttp.ClientSession, mixed_node: NodeProcess) -> None:
    for named in ({}, {"model": MODEL}):
        async with http.post(f"{mixed_node.url}/v1/chat/completions",
                             json={"messages": MESSAGES, "max_tokens": 2, **named}) as reply:
            assert reply.status == 200
            assert (await reply.json())["model"] == MODEL


async def test_n_chat_choices_each_equal_the_single_greedy_answer(client: AsyncOpenAI) -> None:
    one = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                               temperature=0)
    three = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8,
                                                 temperature=0, n=3)
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.message.content for c in three.choices] == [one.choices[0].message.content] * 3
    assert one.usage is not None and three.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens == 24


async def test_n_completion_choices_come_prompt_by_prompt(client: AsyncOpenAI) -> None:
    singles = [(await client.completions.create(model=MODEL, prompt=p, max_tokens=6,
                                                temperature=0)).choices[0].text
               for p in ("first", "second")]
    both = await client.completions.create(model=MODEL, prompt=["first", "second"],
                                           max_tokens=6, temperature=0, n=2)
    assert [c.index for c in both.choices] == [0, 1, 2, 3]
    assert [c.text for c in both.choices] == [singles[0]] * 2 + [singles[1]] * 2
    assert both.usage is not None and both.usage.completion_tokens == 24


async def test_streaming_n_choices_is_a_clear_400(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES, n=2, stream=True)
    assert "streaming takes one prompt and n=1" in refused.value.message
