"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Both generation routes run through the same `GenerationService` as `/generate`; they only
translate parameters and reply shapes. `n` > 1 runs one generation request per choice.
Bootstrap fields are honoured as on `/generate` (one per choice when `n` > 1), so a router
can disaggregate OpenAI traffic too. A request naming another model than the node's is 404,
as vLLM answers it; errors come in OpenAI's shape (`node.http.errors`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from node.api.sse import stream_response
from node.api.streaming import complete, sse_from_updates
from node.engine import tokenizer
from node.engine.engine import GenerationUpdate
from node.engine.sampler import SamplingParams
from node.errors import BadRequest, ModelNotFound
from node.generation import Bootstrap, GenerationRequest, one_per_item
from node.http.body import read_body
from node.runtime import NodeRuntime

router = APIRouter(prefix="/v1")

MAX_CHOICES = 128


class StreamOptions(BaseModel):
    include_usage: bool = False


class _OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    # Each choice is a generation request of its own: bounded like a batch.
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    rid: str | None = None
    # One value for the request, or one per choice (prompt by prompt, `n` each), as a router
    # sends them for `n` > 1.
    bootstrap_host: str | list[str] | None = None
    bootstrap_port: int | list[int] | None = None
    bootstrap_room: int | list[int] | None = None

    def prompts(self) -> list[list[int]]:
        """Token ids of each prompt."""
        raise NotImplementedError

    def max_new_tokens(self) -> int | None:
        return self.max_tokens

    def to_requests(self, rid: str) -> list[GenerationRequest]:
        """One generation request per choice, in the reply's order: each prompt `n` times."""
        prompts = self.prompts()
        count = len(prompts) * self.n
        if self.stream and count > 1:
            raise BadRequest("streaming takes one prompt and n=1")
        max_tokens = self.max_new_tokens()
        sampling = SamplingParams.model_validate(
            {
                "max_new_tokens": 16 if max_tokens is None else max_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "stop": self.stop,
                "seed": self.seed,
            }
        )

        hosts = one_per_item("bootstrap_host", self.bootstrap_host, count, "choices")
        ports = one_per_item("bootstrap_port", self.bootstrap_port, count, "choices")
        rooms = one_per_item("bootstrap_room", self.bootstrap_room, count, "choices")
        return [
            GenerationRequest(
                rid=rid if count == 1 else f"{rid}-{i}",
                input_ids=prompts[i // self.n],
                sampling=sampling,
                bootstrap=Bootstrap(host=hosts[i], port=ports[i], room=rooms[i]),
            )
            for i in range(count)
        ]


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] | list[int] | list[list[int]]

    def prompts(self) -> list[list[int]]:
        prompt = self.prompt
        if isinstance(prompt, str):
            return [tokenizer.encode(prompt)]
        if not prompt:
            raise BadRequest("prompt is empty")
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return [tokenizer.encode(p) if isinstance(p, str) else list(p)  # type: ignore[arg-type]
                for p in prompt]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=0)

    def prompts(self) -> list[list[int]]:
        prompt = "".join(f"<|{m.role}|>\n{m.text()}\n" for m in self.messages) + "<|assistant|>\n"
        return [tokenizer.encode(prompt)]

    def max_new_tokens(self) -> int | None:
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


def _finish_reason(update: GenerationUpdate) -> Literal["stop", "length"] | None:
    if update.finish is None:
        return None
    return "length" if update.finish.type == "length" else "stop"


def _usage(prompt_tokens: int, finals: list[GenerationUpdate]) -> dict[str, int]:
    """Every choice's tokens; each prompt counts once, however many choices it has."""
    completion = sum(len(final.output_ids) for final in finals)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


class _Renderer:
    """Builds the reply or the stream chunks of one completion or chat request."""

    def __init__(
        self,
        kind: Literal["completion", "chat"],
        rid: str,
        prompt_tokens: int,
        model: str,
        usage: bool,
    ) -> None:
        self.kind = kind
        self.prompt_tokens = prompt_tokens
        self.model = model
        self.include_usage = usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + rid
        self.created = int(time.time())
        self._sent = ""
        self._role_sent = False

    def _envelope(self, object_name: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _choice(self, index: int, final: GenerationUpdate) -> dict[str, Any]:
        reason = _finish_reason(final)
        if self.kind == "chat":
            return {
                "index": index,
                "message": {"role": "assistant", "content": final.text},
                "finish_reason": reason,
                "logprobs": None,
            }
        return {"index": index, "text": final.text, "finish_reason": reason, "logprobs": None}

    def reply(self, finals: list[GenerationUpdate]) -> dict[str, Any]:
        choices = [self._choice(i, final) for i, final in enumerate(finals)]
        body = self._envelope("chat.completion" if self.kind == "chat" else "text_completion",
                              choices)
        body["usage"] = _usage(self.prompt_tokens, finals)
        return body

    def chunks(self, update: GenerationUpdate) -> Iterable[dict[str, Any]]:
        object_name = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        if self.kind == "chat" and not self._role_sent:
            self._role_sent = True
            yield self._envelope(
                object_name,
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            )
        delta = update.text[len(self._sent) :]
        self._sent = update.text
        reason = _finish_reason(update)
        if delta or reason:
            if self.kind == "chat":
                choice = {
                    "index": 0,
                    "delta": {"content": delta} if delta else {},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            else:
                choice = {"index": 0, "text": delta, "finish_reason": reason, "logprobs": None}
            yield self._envelope(object_name, [choice])
        if reason and self.include_usage:
            chunk = self._envelope(object_name, [])
            chunk["usage"] = _usage(self.prompt_tokens, [update])
            yield chunk


async def _serve(
    request: Request, kind: Literal["completion", "chat"]
) -> Response | dict[str, Any]:
    runtime: NodeRuntime = request.app.state.runtime
    model_type = ChatRequest if kind == "chat" else CompletionRequest
    body = await read_body(request, model_type, max_bytes=runtime.options.max_body_bytes)
    served = runtime.options.model_name
    if body.model and body.model != served:
        raise ModelNotFound(f"The model `{body.model}` does not exist.")
    rid = body.rid or uuid.uuid4().hex
    requests = body.to_requests(rid)
    service = runtime.service
    for one in requests:
        service.validate(one)
    await service.admit(requests)
    usage = body.stream_options is not None and body.stream_options.include_usage
    prompt_tokens = sum(len(one.input_ids) for one in requests[:: body.n])
    renderer = _Renderer(kind, rid, prompt_tokens, served, usage)
    if body.stream:
        (only,) = requests
        return stream_response(sse_from_updates(service.stream(only), renderer.chunks))
    return renderer.reply(await complete(service, requests))


@router.post("/completions", response_model=None)
async def completions(request: Request) -> Response | dict[str, Any]:
    return await _serve(request, "completion")


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response | dict[str, Any]:
    return await _serve(request, "chat")


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    runtime: NodeRuntime = request.app.state.runtime
    return {
        "object": "list",
        "data": [
            {
                "id": runtime.options.model_name,
                "object": "model",
                "created": runtime.started_at,
                "owned_by": "pdfleet",
            }
        ],
    }
