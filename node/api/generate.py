"""`POST /generate`, SGLang's native generation route."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from node.api.sse import stream_response
from node.api.streaming import complete, sse_from_updates
from node.engine import tokenizer
from node.engine.engine import GenerationUpdate
from node.engine.sampler import SamplingParams
from node.errors import BadRequest
from node.generation import Bootstrap, GenerationRequest, one_per_item
from node.http.body import read_body
from node.runtime import NodeRuntime

router = APIRouter()


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: SamplingParams | list[SamplingParams] | None = None
    stream: bool = False
    rid: str | list[str] | None = None
    bootstrap_host: str | list[str] | None = None
    bootstrap_port: int | list[int] | None = None
    bootstrap_room: int | list[int] | None = None

    def prompts(self) -> tuple[list[list[int]], bool]:
        """Token ids per prompt, and whether the input was a batch."""
        if (self.text is None) == (self.input_ids is None):
            raise BadRequest("send exactly one of text or input_ids")
        if isinstance(self.text, str):
            return [tokenizer.encode(self.text)], False
        if self.text is not None:
            return [tokenizer.encode(t) for t in self.text], True
        assert self.input_ids is not None
        if self.input_ids and isinstance(self.input_ids[0], list):
            return [list(ids) for ids in self.input_ids], True  # type: ignore[arg-type]
        return [list(self.input_ids)], False  # type: ignore[arg-type]

    def to_requests(self) -> tuple[list[GenerationRequest], bool]:
        prompts, batched = self.prompts()
        count = len(prompts)
        if count == 0:
            raise BadRequest("the batch is empty")

        def per_prompt(name: str, value: Any) -> list[Any]:
            if isinstance(value, list) and not batched:
                raise BadRequest(f"{name} is a list; the input is one prompt")
            return one_per_item(name, value, count, "prompts")

        params = per_prompt("sampling_params", self.sampling_params or SamplingParams())
        rids = per_prompt("rid", self.rid) if self.rid is not None else [None] * count
        hosts = per_prompt("bootstrap_host", self.bootstrap_host)
        ports = per_prompt("bootstrap_port", self.bootstrap_port)
        rooms = per_prompt("bootstrap_room", self.bootstrap_room)
        requests = [
            GenerationRequest(
                rid=rids[i] or uuid.uuid4().hex,
                input_ids=prompts[i],
                sampling=params[i],
                bootstrap=Bootstrap(host=hosts[i], port=ports[i], room=rooms[i]),
            )
            for i in range(count)
        ]
        return requests, batched


class MetaInfo(BaseModel):
    id: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: dict[str, Any] | None
    weight_version: str | None


class GenerateReply(BaseModel):
    text: str
    output_ids: list[int]
    meta_info: MetaInfo

    @classmethod
    def of(
        cls, request: GenerationRequest, update: GenerationUpdate, weight_version: str | None
    ) -> GenerateReply:
        return cls(
            text=update.text,
            output_ids=update.output_ids,
            meta_info=MetaInfo(
                id=request.rid,
                prompt_tokens=len(request.input_ids),
                completion_tokens=len(update.output_ids),
                finish_reason=update.finish.as_dict() if update.finish else None,
                weight_version=weight_version,
            ),
        )


@router.post("/generate", response_model=None)
async def generate(request: Request) -> Response | list[dict[str, Any]] | dict[str, Any]:
    runtime: NodeRuntime = request.app.state.runtime
    body = await read_body(request, GenerateRequest, max_bytes=runtime.options.max_body_bytes)
    requests, batched = body.to_requests()
    service = runtime.service
    controller = runtime.controller

    def version() -> str | None:
        # Read as each reply is built: an update waits for running requests, so this is the
        # version that computed their tokens.
        return controller.weight_version

    for one in requests:
        service.validate(one)
    await service.admit(requests)
    if body.stream:
        if batched:
            raise BadRequest("streaming takes a single prompt")
        (only,) = requests
        events = sse_from_updates(
            service.stream(only),
            lambda update: [GenerateReply.of(only, update, version()).model_dump()],
        )
        return stream_response(events)
    finals = await complete(service, requests)
    replies = [GenerateReply.of(r, f, version()).model_dump()
               for r, f in zip(requests, finals, strict=True)]
    return replies if batched else replies[0]
