"""Generation over HTTP: SGLang's /generate, streaming, and the OpenAI-compatible routes."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openai import AsyncOpenAI

from tests.node.conftest import NodeProcess, StartNode, greedy, sse_events

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def second_node(start_node: StartNode) -> NodeProcess:
    return start_node()


async def generate(http: aiohttp.ClientSession, node: NodeProcess, body: Any) -> Any:
    async with http.post(f"{node.url}/generate", json=body) as reply:
        assert reply.status == 200, await reply.text()
        return await reply.json()


async def test_same_prompt_gives_same_tokens_twice(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    first = await generate(http, mixed_node, greedy("determinism", 24))
    second = await generate(http, mixed_node, greedy("determinism", 24))
    assert len(first["output_ids"]) == 24
    assert first["output_ids"] == second["output_ids"]
    assert first["meta_info"]["finish_reason"] == {"type": "length", "length": 24}
    assert first["meta_info"]["prompt_tokens"] == len("determinism") + 1


async def test_same_tokens_across_node_processes(
    http: aiohttp.ClientSession, mixed_node: NodeProcess, second_node: NodeProcess
) -> None:
    body = {
        "text": "across",
        "sampling_params": {"max_new_tokens": 24, "temperature": 0.9, "seed": 5},
    }
    assert (await generate(http, mixed_node, body))["output_ids"] == (
        await generate(http, second_node, body)
    )["output_ids"]


async def test_seeded_sampling_depends_on_seed(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    outputs = [
        (
            await generate(
                http,
                mixed_node,
                {
                    "text": "seeds",
                    "sampling_params": {"max_new_tokens": 24, "temperature": 1.5, "seed": seed},
                },
            )
        )["output_ids"]
        for seed in (1, 2)
    ]
    assert outputs[0] != outputs[1]


async def test_input_ids_and_batched_text(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    single = await generate(http, mixed_node, greedy("batch a"))
    by_ids = await generate(
        http, mixed_node, {"input_ids": [256, *b"batch a"], "sampling_params": {"temperature": 0}}
    )
    batch = await generate(
        http, mixed_node, {"text": ["batch a", "batch b"], "sampling_params": {"temperature": 0}}
    )
    assert by_ids["output_ids"] == single["output_ids"]
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["output_ids"] == single["output_ids"]


async def test_stop_string_ends_generation(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    full = await generate(http, mixed_node, greedy("stops", 24))
    stop = full["text"][3:5]
    stopped = await generate(
        http,
        mixed_node,
        {
            "text": "stops",
            "sampling_params": {"max_new_tokens": 24, "temperature": 0, "stop": [stop]},
        },
    )
    assert stopped["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert stopped["text"] == full["text"][: full["text"].index(stop)]


async def test_streaming_sends_incremental_events_then_done(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    expected = await generate(http, mixed_node, greedy("stream me", 8))
    async with http.post(
        f"{mixed_node.url}/generate", json=greedy("stream me", 8, stream=True)
    ) as reply:
        assert reply.status == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = await sse_events(reply)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [len(c["output_ids"]) for c in chunks] == list(range(1, 9))
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["output_ids"] == expected["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 8}


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b'{"sampling_params": {"max_new_tokens": 4}}', 400, "text or input_ids"),
        (b'{"text": "x", "sampling_params": {"max_new_tokens": -1}}', 400, "max_new_tokens"),
        (b'{"text": "x", "sampling_params": {"max_new_tokens": 5000}}', 400, "context"),
    ],
)
async def test_bad_generate_requests_are_rejected_clearly(
    http: aiohttp.ClientSession, mixed_node: NodeProcess, body: bytes, status: int, phrase: str
) -> None:
    async with http.post(f"{mixed_node.url}/generate", data=body) as reply:
        assert reply.status == status
        error = await reply.json()
    assert error["success"] is False
    assert phrase in error["message"]


async def test_oversized_body_is_413(http: aiohttp.ClientSession, mixed_node: NodeProcess) -> None:
    async with http.post(f"{mixed_node.url}/generate", data=b"x" * (17 * 1024 * 1024)) as reply:
        assert reply.status == 413
        assert "limit" in (await reply.json())["message"]


async def test_health_generate_runs_a_token(
    http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    async with http.get(f"{mixed_node.url}/health_generate") as reply:
        assert reply.status == 200
        assert len((await reply.json())["output_ids"]) == 1


@pytest.fixture
async def openai_client(mixed_node: NodeProcess) -> Any:
    async with AsyncOpenAI(
        base_url=f"{mixed_node.url}/v1", api_key="unused", max_retries=0
    ) as client:
        yield client


async def test_openai_models(openai_client: AsyncOpenAI) -> None:
    models = await openai_client.models.list()
    assert [m.id for m in models.data] == ["pdfleet-tiny"]


async def test_openai_completion_matches_generate(
    openai_client: AsyncOpenAI, http: aiohttp.ClientSession, mixed_node: NodeProcess
) -> None:
    native = await generate(http, mixed_node, greedy("openai", 12))
    completion = await openai_client.completions.create(
        model="pdfleet-tiny", prompt="openai", max_tokens=12, temperature=0
    )
    assert completion.choices[0].text == native["text"]
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    assert completion.usage.prompt_tokens == native["meta_info"]["prompt_tokens"]


async def test_openai_completion_streaming(openai_client: AsyncOpenAI) -> None:
    whole = await openai_client.completions.create(
        model="pdfleet-tiny", prompt="flow", max_tokens=10, temperature=0
    )
    stream = await openai_client.completions.create(
        model="pdfleet-tiny", prompt="flow", max_tokens=10, temperature=0, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_openai_chat_and_chat_streaming(openai_client: AsyncOpenAI) -> None:
    messages: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    whole = await openai_client.chat.completions.create(
        model="pdfleet-tiny", messages=messages, max_tokens=10, temperature=0
    )
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert whole.usage is not None and whole.usage.completion_tokens == 10
    stream = await openai_client.chat.completions.create(
        model="pdfleet-tiny", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_weights_load_from_a_safetensors_file(
    http: aiohttp.ClientSession,
    start_node: StartNode,
    mixed_node: NodeProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import torch
    from safetensors.torch import save_file

    from node.engine.model import ModelConfig, TransformerWeights
    from node.engine.tokenizer import VOCAB_SIZE
    from node.options import NodeOptions

    default = NodeOptions()
    config = ModelConfig(default.model_shape, VOCAB_SIZE, torch.float32, torch.device("cpu"))
    weights = TransformerWeights(config, torch.empty(config.numel()))
    weights.init_seeded(default.seed)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({name: param.clone() for name, param in weights.params.items()}, str(path))
    from_file = start_node("--model", str(path), "--seed", "999")
    assert from_file.info()["model"]["name"] == "tiny"
    body = greedy("weights from a file", 16)
    assert (await generate(http, from_file, body))["output_ids"] == (
        await generate(http, mixed_node, body)
    )["output_ids"]


async def test_fault_injection_flags_are_accepted(
    http: aiohttp.ClientSession, start_node: StartNode
) -> None:
    node = start_node(
        "--enable-fault-injection", "--fault", "route=/generate,kind=delay,seconds=0.1"
    )
    assert len((await generate(http, node, greedy("faults", 4)))["output_ids"]) == 4
