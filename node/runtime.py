"""The node's composition root: builds model, KV pool, memory backend, controller and PD parts.

Loading order matters: both memory regions are allocated through the backend, so that every
byte the backend can release was allocated inside its region.
"""

from __future__ import annotations

import logging
import time

import torch

from node.admission import Admission
from node.engine.engine import Engine
from node.engine.kv_pool import KVPool
from node.engine.model import ModelConfig, Transformer, TransformerWeights
from node.engine.tokenizer import VOCAB_SIZE
from node.errors import BadRequest
from node.faults.rules import RESUME_KINDS, FaultSet
from node.generation import GenerationService
from node.memory.backends import make_backend
from node.memory.controller import MemoryController
from node.memory.tags import MemoryTag
from node.metrics import NodeMetrics
from node.options import NodeOptions
from node.pd.puller import KVPuller
from node.pd.store import HandoffStore
from node.refit.checkpoint import write_checkpoint
from node.refit.disk import CheckpointFile
from node.refit.group import WeightsGroups
from node.refit.transfer import WeightsCopier
from pdfleet.vocabulary import Role

log = logging.getLogger("node")


def model_config(options: NodeOptions) -> ModelConfig:
    return ModelConfig(
        shape=options.model_shape,
        vocab=VOCAB_SIZE,
        dtype=getattr(torch, options.torch_dtype_name),
        device=torch.device(options.device),
    )


def fill_weights(weights: TransformerWeights, options: NodeOptions, copier: WeightsCopier) -> None:
    """The weights `--model` names, or the seeded init; a file that does not fit the model
    stops the node with the reason."""
    if not options.model:
        weights.init_seeded(options.seed)
        return
    try:
        with CheckpointFile(options.model, None, weights, copier) as source:
            source.check()
            source.copy()
    except BadRequest as error:
        raise ValueError(f"--model: {error.message}") from None


def save_weights(options: NodeOptions, path: str) -> int:
    """Write the weights a node with `options` would serve; the bytes written."""
    config = model_config(options)
    weights = TransformerWeights(config, torch.empty(config.numel(), dtype=config.dtype,
                                                     device=config.device))
    fill_weights(weights, options, WeightsCopier())
    return write_checkpoint(path, weights.flat, config.layout())


class NodeRuntime:
    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.started_at = int(time.time())
        self.metrics = NodeMetrics()
        if options.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
        self.backend = make_backend(options.memory_backend, options.device)
        shape = options.model_shape
        config = model_config(options)
        weights = TransformerWeights(
            config, self.backend.allocate(MemoryTag.WEIGHTS, config.numel(), config.dtype)
        )
        self.copier = WeightsCopier()
        fill_weights(weights, options, self.copier)
        self.weights = weights
        self.groups = WeightsGroups()
        kv_numel = KVPool.numel(
            shape.layers, options.kv_slots, options.slot_tokens, shape.heads, shape.head_dim
        )
        kv_flat = self.backend.allocate(MemoryTag.KV_CACHE, kv_numel, config.dtype)
        kv_flat.zero_()
        self.pool = KVPool(
            kv_flat,
            shape.layers,
            options.kv_slots,
            options.slot_tokens,
            shape.heads,
            shape.head_dim,
        )
        self.engine = Engine(Transformer(weights), self.pool)
        self.admission = Admission()
        self.handoffs = (
            HandoffStore(self.engine, self.admission, options.kv_ttl_s,
                         weight_version=lambda: self.controller.weight_version)
            if options.role is Role.PREFILL
            else None
        )
        self.puller = (
            KVPuller(options.kv_handoff_timeout_s) if options.role is Role.DECODE else None
        )
        self.service = GenerationService(
            options.role, self.engine, self.admission, self.handoffs, self.puller,
            on_tokens=self.metrics.tokens_generated,
            weight_version=lambda: self.controller.weight_version,
        )
        # health_generate probes the local model whatever the role.
        self.local_service = GenerationService(Role.MIXED, self.engine, self.admission)
        self.faults = (
            FaultSet(options.faults)
            if options.enable_fault_injection
            else None
        )
        self.controller = MemoryController(
            self.backend, self.engine, self.admission, options.drain_timeout_s,
            self._clear_kv_state, oom_injected=self._oom_injected,
            on_step=self.metrics.step_done, weight_version=options.weight_version,
        )
        self.metrics.watch(self.controller, self.admission)
        log.info(
            "node ready: role=%s device=%s backend=%s model=%s weights=%d bytes kv=%d bytes",
            options.role,
            options.device,
            self.backend.name,
            shape,
            self.backend.region_bytes(MemoryTag.WEIGHTS),
            self.backend.region_bytes(MemoryTag.KV_CACHE),
        )

    def _oom_injected(self) -> bool:
        return self.faults is not None and self.faults.take(None, RESUME_KINDS) is not None

    def _clear_kv_state(self) -> None:
        """The KV pool was zeroed or flushed: forget everything that pointed into it."""
        if self.handoffs is not None:
            self.handoffs.drop_all("the KV cache was cleared")
        self.pool.clear()

    def weights_from_disk(self, model_path: str, load_format: str | None) -> CheckpointFile:
        return CheckpointFile(model_path, load_format, self.weights, self.copier)

    async def aclose(self) -> None:
        if self.puller is not None:
            await self.puller.close()
