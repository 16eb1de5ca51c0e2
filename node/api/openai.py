"""OpenAI-compatible routes: `/v1/completions`, `/v1/chat/completions`, `/v1/models`.

Both generation routes run through the same `GenerationService` as `/generate`; they only
translate parameters and reply shapes. Bootstrap fields are honoured as on `/generate`, so a
router can disaggregate OpenAI traffic too.
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
from node.api.streaming import aborted_error, sse_from_updates
from node.engine import tokenizer
from node.engine.engine import GenerationUpdate
from node.engine.sampler import SamplingParams
from node.errors import BadRequest
from node.generation import Bootstrap, GenerationRequest
from node.http.body import read_body
from node.runtime import NodeRuntime

router = APIRouter(prefix="/v1")


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
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    rid: str | None = None
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None

    def generation_request(self, input_ids: list[int], max_tokens: int | None) -> GenerationRequest:
        if self.n != 1:
            raise BadRequest("only n=1 is supported")
        sampling = SamplingParams.model_validate(
            {
                "max_new_tokens": 16 if max_tokens is None else max_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "stop": self.stop,
                "seed": self.seed,
            }
        )
        return GenerationRequest(
            rid=self.rid or uuid.uuid4().hex,
            input_ids=input_ids,
            sampling=sampling,
            bootstrap=Bootstrap(
                host=self.bootstrap_host, port=self.bootstrap_port, room=self.bootstrap_room
            ),
        )


class CompletionRequest(_OpenAIRequest):
    prompt: str | list[str] | list[int]

    def to_request(self) -> GenerationRequest:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            ids = list(prompt)  # type: ignore[arg-type]
        elif isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadRequest("a list prompt must hold exactly one string")
            ids = tokenizer.encode(str(prompt[0]))
        else:
            ids = tokenizer.encode(prompt)
        return self.generation_request(ids, self.max_tokens)


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

    def to_request(self) -> GenerationRequest:
        prompt = "".join(f"<|{m.role}|>\n{m.text()}\n" for m in self.messages) + "<|assistant|>\n"
        max_tokens = (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )
        return self.generation_request(tokenizer.encode(prompt), max_tokens)


def _finish_reason(update: GenerationUpdate) -> Literal["stop", "length"] | None:
    if update.finish is None:
        return None
    return "length" if update.finish.type == "length" else "stop"


def _usage(request: GenerationRequest, update: GenerationUpdate) -> dict[str, int]:
    prompt, completion = len(request.input_ids), len(update.output_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Renderer:
    """Builds the reply or the stream chunks of one completion or chat request."""

    def __init__(
        self,
        kind: Literal["completion", "chat"],
        request: GenerationRequest,
        model: str,
        usage: bool,
    ) -> None:
        self.kind = kind
        self.request = request
        self.model = model
        self.include_usage = usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + request.rid
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

    def reply(self, final: GenerationUpdate) -> dict[str, Any]:
        reason = _finish_reason(final)
        if self.kind == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": final.text},
                "finish_reason": reason,
                "logprobs": None,
            }
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": final.text, "finish_reason": reason, "logprobs": None}
            body = self._envelope("text_completion", [choice])
        body["usage"] = _usage(self.request, final)
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
            chunk["usage"] = _usage(self.request, update)
            yield chunk


async def _serve(
    request: Request, kind: Literal["completion", "chat"]
) -> Response | dict[str, Any]:
    runtime: NodeRuntime = request.app.state.runtime
    model_type = ChatRequest if kind == "chat" else CompletionRequest
    body = await read_body(request, model_type, max_bytes=runtime.options.max_body_bytes)
    one = body.to_request()
    service = runtime.service
    service.validate(one)
    service.check_admission([one])
    usage = body.stream_options is not None and body.stream_options.include_usage
    renderer = _Renderer(kind, one, body.model or runtime.options.model_name, usage)
    if body.stream:
        return stream_response(sse_from_updates(service.stream(one), renderer.chunks))
    final = await service.complete(one)
    if final.finish is not None and final.finish.type == "abort":
        raise aborted_error(final)
    return renderer.reply(final)


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
