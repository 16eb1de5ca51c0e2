"""The generation loop: prefill (or installed KV), then sample and decode token by token.

Forward passes run in a worker thread so the event loop keeps answering (health, status,
memory control) while a model step runs. One lock serialises every touch of model or pool
memory - forward steps, KV export/install and memory release/resume - so a release can
never free storage under a running step, even one whose request was cancelled meanwhile.
Requests interleave step by step; each has its own KV slot and sampler, so its tokens do not
depend on what else runs. Between two steps a request may be frozen by an in-place pause
(`InflightWork.between_steps`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch

from node.admission import InflightWork
from node.engine.kv_pool import KVPool, KVSlot
from node.engine.model import Transformer
from node.engine.sampler import Sampler, SamplingParams
from node.engine.tokenizer import EOS_ID, IncrementalDecoder

T = TypeVar("T")


@dataclass(frozen=True)
class Finish:
    """SGLang's `meta_info.finish_reason`."""

    type: Literal["length", "stop", "abort"]
    matched: str | int | None = None
    length: int | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        reason: dict[str, Any] = {"type": self.type}
        if self.type == "length":
            reason["length"] = self.length
        elif self.type == "stop":
            reason["matched"] = self.matched
        else:
            reason["message"] = self.message
        return reason


@dataclass(frozen=True)
class GenerationUpdate:
    """Cumulative output after one more token (or the end)."""

    output_ids: list[int]
    text: str
    finish: Finish | None = None


@dataclass(frozen=True)
class Prefilled:
    """A prompt whose KV sits in `slot`, with the logits for the first new token."""

    slot: KVSlot
    logits: torch.Tensor
    prompt_len: int


class Engine:
    def __init__(self, model: Transformer, pool: KVPool) -> None:
        self.model = model
        self.pool = pool
        self.device = model.config.device
        self._memory_lock = threading.Lock()

    async def exclusive(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in a worker thread while nothing else touches model or pool memory."""
        return await asyncio.to_thread(self._locked, fn, *args)

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._memory_lock:
            return fn(*args)

    async def prefill(self, input_ids: list[int]) -> Prefilled:
        slot = await self.pool.acquire()
        try:
            logits = await self.exclusive(self.model.prefill, input_ids, slot)
        except BaseException:
            self.pool.free(slot)
            raise
        return Prefilled(slot=slot, logits=logits, prompt_len=len(input_ids))

    async def install(self, kv: torch.Tensor, logits: torch.Tensor) -> Prefilled:
        """Take over a prompt prefilled elsewhere (a prefill node's hand-off)."""
        slot = await self.pool.acquire()
        try:
            await self.exclusive(self.pool.install, slot, kv.to(self.device))
        except BaseException:
            self.pool.free(slot)
            raise
        return Prefilled(slot=slot, logits=logits.to(self.device), prompt_len=kv.shape[2])

    async def export(self, prefilled: Prefilled) -> torch.Tensor:
        return await self.exclusive(self.pool.export, prefilled.slot, prefilled.prompt_len)

    def free(self, prefilled: Prefilled) -> None:
        self.pool.free(prefilled.slot)

    async def decode(
        self, prefilled: Prefilled, params: SamplingParams, work: InflightWork
    ) -> AsyncIterator[GenerationUpdate]:
        """Sample up to `max_new_tokens` tokens; the last update carries the finish reason."""
        sampler = Sampler(params, self.device)
        text = IncrementalDecoder()
        output_ids: list[int] = []
        logits = prefilled.logits
        position = prefilled.prompt_len
        while True:
            await work.between_steps()
            if work.abort_reason is not None:
                text.finish()
                yield GenerationUpdate(
                    output_ids, text.text, Finish("abort", message=work.abort_reason)
                )
                return
            if params.max_new_tokens == 0:
                yield GenerationUpdate([], "", Finish("length", length=0))
                return
            token = sampler.sample(logits)
            output_ids.append(token)
            text.push(token)
            if token == EOS_ID:
                text.finish()
                yield GenerationUpdate(list(output_ids), text.text, Finish("stop", matched=EOS_ID))
                return
            matched = _find_stop(text.text, params.stop)
            if matched is not None:
                cut = text.text.index(matched)
                yield GenerationUpdate(
                    list(output_ids), text.text[:cut], Finish("stop", matched=matched)
                )
                return
            if len(output_ids) == params.max_new_tokens:
                text.finish()
                yield GenerationUpdate(
                    list(output_ids), text.text, Finish("length", length=len(output_ids))
                )
                return
            yield GenerationUpdate(list(output_ids), _hold_back_stop_prefix(text.text, params.stop))
            logits = await self.exclusive(self.model.decode, token, position, prefilled.slot)
            position += 1


def _find_stop(text: str, stops: list[str]) -> str | None:
    hits = [(text.find(stop), stop) for stop in stops if stop in text]
    return min(hits)[1] if hits else None


def _hold_back_stop_prefix(text: str, stops: list[str]) -> str:
    """Text safe to show: a tail that may grow into a stop string is withheld for now."""
    hold = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:size]):
                hold = size
                break
    return text[: len(text) - hold]
