"""Liveness, a real generation probe, and everything an operator's dashboard shows."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from node.engine.sampler import SamplingParams
from node.engine.tokenizer import encode
from node.errors import ServiceUnavailable
from node.generation import Bootstrap, GenerationRequest
from node.memory.messages import MemoryInfo
from node.metrics import CONTENT_TYPE
from node.runtime import NodeRuntime
from pdfleet.vocabulary import MemoryTag, Role

router = APIRouter()


class ModelInfo(BaseModel):
    name: str
    layers: int
    width: int
    heads: int
    vocab: int
    dtype: str
    weight_bytes: int
    kv_slots: int
    kv_slot_tokens: int
    kv_bytes: int


class ServerInfo(BaseModel):
    role: Role
    backend: str
    memory_saver_enabled: bool
    device: str
    state: str
    is_sleeping: bool
    released_tags: list[MemoryTag]
    admission: str
    inflight: int
    held_kv_handoffs: int
    bootstrap_port: int | None
    # None while the weights are incomplete after a failed update.
    weight_version: str | None
    paused: bool
    pause_mode: str | None
    frozen_requests: int
    waiting_requests: int
    model: ModelInfo
    memory: MemoryInfo


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    runtime: NodeRuntime = request.app.state.runtime
    return {"status": "ok", "is_sleeping": bool(runtime.controller.released_tags)}


@router.get("/health_generate")
async def health_generate(request: Request) -> dict[str, Any]:
    """Runs one real token through the local model; 503 while sleeping, draining or paused
    (a probe must answer: it does not wait for continue_generation as a request does)."""
    runtime: NodeRuntime = request.app.state.runtime
    if runtime.admission.paused is not None:
        raise ServiceUnavailable(
            f"generation is paused (mode {runtime.admission.paused}); continue_generation "
            "resumes it")
    probe = GenerationRequest(
        rid=f"health-{uuid.uuid4().hex[:8]}",
        input_ids=encode("health"),
        sampling=SamplingParams(max_new_tokens=1, temperature=0.0),
        bootstrap=Bootstrap(host=None, port=None, room=None),
    )
    final = await runtime.local_service.complete(probe)
    return {"status": "ok", "output_ids": final.output_ids}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    runtime: NodeRuntime = request.app.state.runtime
    return Response(runtime.metrics.exposition(), media_type=CONTENT_TYPE)


@router.get("/get_server_info")
async def get_server_info(request: Request) -> ServerInfo:
    runtime: NodeRuntime = request.app.state.runtime
    options = runtime.options
    stats = runtime.controller.backend.stats()
    shape = options.model_shape
    memory = MemoryInfo.of(stats)
    released = runtime.controller.released_tags
    return ServerInfo(
        role=options.role,
        backend=stats.backend,
        memory_saver_enabled=stats.enabled,
        device=options.device,
        state=runtime.controller.state.value,
        is_sleeping=bool(released),
        released_tags=released,
        admission=runtime.admission.closed_reason or "open",
        inflight=len(runtime.admission.inflight),
        held_kv_handoffs=runtime.handoffs.held_rooms if runtime.handoffs else 0,
        bootstrap_port=options.bootstrap_port if options.role is Role.PREFILL else None,
        weight_version=runtime.controller.weight_version,
        paused=runtime.admission.paused is not None,
        pause_mode=runtime.admission.paused,
        frozen_requests=runtime.admission.frozen,
        waiting_requests=runtime.admission.waiting,
        model=ModelInfo(
            name=options.model_name,
            layers=shape.layers,
            width=shape.width,
            heads=shape.heads,
            vocab=runtime.engine.model.config.vocab,
            dtype=options.torch_dtype_name,
            weight_bytes=memory.regions[MemoryTag.WEIGHTS].bytes,
            kv_slots=options.kv_slots,
            kv_slot_tokens=options.slot_tokens,
            kv_bytes=memory.regions[MemoryTag.KV_CACHE].bytes,
        ),
        memory=memory,
    )
