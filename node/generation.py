"""Where a generation request is run according to the node's role.

- mixed: prefill and decode here.
- prefill: prefill here, hold the KV for the request's `bootstrap_room`, and answer with the
  first token only (the decode node samples that same token from the same logits).
- decode: pull the KV for `bootstrap_room` from the prefill node, then decode here.

Every request is admitted first (503 while the node sleeps, drains or updates its weights;
held while generation is paused) and counts as in-flight work until its last update.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from node.admission import Admission, InflightWork
from node.engine.engine import Engine, GenerationUpdate, Prefilled
from node.engine.sampler import SamplingParams
from node.errors import BadRequest, HandoffFailed, NotAdmitted, WeightVersionMismatch
from node.pd.puller import BootstrapTarget, KVPuller
from node.pd.store import HandoffStore
from pdfleet.vocabulary import Role


@dataclass(frozen=True)
class Bootstrap:
    """SGLang's bootstrap fields as sent by a router; a mixed node ignores them."""

    host: str | None
    port: int | None
    room: int | None


def one_per_item(name: str, value: Any, count: int, items: str) -> list[Any]:
    """`value` for each of `count` items (prompts of a batch, choices of an OpenAI request):
    one value for all, or a list with one entry per item."""
    if not isinstance(value, list):
        return [value] * count
    if len(value) != count:
        raise BadRequest(f"{name} is a list of {len(value)}; the request has {count} {items}")
    return value


@dataclass(frozen=True)
class GenerationRequest:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    bootstrap: Bootstrap


class GenerationService:
    def __init__(
        self,
        role: Role,
        engine: Engine,
        admission: Admission,
        handoffs: HandoffStore | None = None,
        puller: KVPuller | None = None,
        on_tokens: Callable[[int], None] | None = None,
        weight_version: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.role = role
        self._weight_version = weight_version
        self._on_tokens = on_tokens
        self._engine = engine
        self._admission = admission
        self._handoffs = handoffs
        self._puller = puller

    def validate(self, request: GenerationRequest) -> None:
        """Reject what can never run, before admission: 400 with the reason."""
        if not request.input_ids:
            raise BadRequest("the prompt is empty")
        vocab = self._engine.model.config.vocab
        if any(not 0 <= t < vocab for t in request.input_ids):
            raise BadRequest(f"input_ids must lie in [0, {vocab})")
        needed = len(request.input_ids) + request.sampling.max_new_tokens
        capacity = self._engine.pool.slot_tokens
        if needed > capacity:
            raise BadRequest(
                f"prompt ({len(request.input_ids)} tokens) plus max_new_tokens "
                f"({request.sampling.max_new_tokens}) exceeds the context of {capacity} tokens"
            )
        boot = request.bootstrap
        if self.role is Role.PREFILL and boot.room is None:
            raise BadRequest("a prefill node needs bootstrap_room")
        if self.role is Role.DECODE and None in (boot.host, boot.port, boot.room):
            raise BadRequest(
                "a decode node needs bootstrap_host, bootstrap_port and bootstrap_room"
            )

    async def admit(self, requests: list[GenerationRequest]) -> None:
        """Wait while generation is paused, then raise NotAdmitted if admission is closed.
        The router sends a request to both
        nodes at once, so either may refuse what the other took. A decode node that refuses
        will never pull the KV, so it tells the prefill node to drop it at once: otherwise
        the prefill node holds it (as in-flight work that its own release drains) until the
        KV's TTL passes. A prefill node that refuses will never compute the KV, so it answers
        the decode node's pull with that refusal: otherwise the decode node waits out its
        hand-off timeout (as in-flight work that its own release drains)."""
        await self._admission.wait_running()
        try:
            self._admission.check()
        except NotAdmitted as refused:
            for request in requests:
                boot = request.bootstrap
                if boot.room is None:
                    continue
                if self._handoffs is not None:
                    self._handoffs.refuse(boot.room, refused.message)
                elif self._puller is not None and boot.host is not None and boot.port is not None:
                    self._puller.decline(
                        BootstrapTarget(boot.host, boot.port, boot.room), refused.message)
            raise

    async def stream(self, request: GenerationRequest) -> AsyncIterator[GenerationUpdate]:
        self.validate(request)
        await self.admit([request])
        work = self._admission.register(f"generate {request.rid}")
        generated = 0
        try:
            await work.between_steps()
            if self.role is Role.DECODE:
                prefilled = await self._pull(request, work)
            else:
                prefilled = await self._engine.prefill(request.input_ids)
            sampling = request.sampling
            try:
                if self.role is Role.PREFILL:
                    sampling = sampling.model_copy(
                        update={"max_new_tokens": min(1, sampling.max_new_tokens)}
                    )
                async for update in self._engine.decode(prefilled, sampling, work):
                    generated = len(update.output_ids)
                    yield update
            finally:
                if self.role is Role.PREFILL and work.abort_reason is None:
                    self._hold(request, prefilled)
                else:
                    self._engine.free(prefilled)
        finally:
            work.finish()
            if self._on_tokens is not None:
                self._on_tokens(generated)

    async def complete(self, request: GenerationRequest) -> GenerationUpdate:
        last: GenerationUpdate | None = None
        async for update in self.stream(request):
            last = update
        assert last is not None and last.finish is not None
        return last

    def _hold(self, request: GenerationRequest, prefilled: Prefilled) -> None:
        assert self._handoffs is not None and request.bootstrap.room is not None
        try:
            self._handoffs.hold(request.bootstrap.room, request.input_ids, prefilled)
        except BaseException:
            self._engine.free(prefilled)
            raise

    async def _pull(self, request: GenerationRequest, work: InflightWork) -> Prefilled:
        assert self._puller is not None
        boot = request.bootstrap
        assert boot.host is not None and boot.port is not None and boot.room is not None
        handoff = await self._puller.pull(BootstrapTarget(boot.host, boot.port, boot.room), work)
        if handoff.input_ids != request.input_ids:
            raise HandoffFailed(
                f"KV for room {boot.room} was computed for another prompt "
                f"({len(handoff.input_ids)} tokens; this request has {len(request.input_ids)})"
            )
        served = self._weight_version()
        if handoff.weight_version != served:
            raise WeightVersionMismatch(
                f"KV for room {boot.room} was computed by weights version "
                f"{handoff.weight_version!r}; this node serves {served!r}: the pair is split "
                "across a weight update, so the request fails rather than mix two policies",
                bootstrap_room=boot.room, prefill_weight_version=handoff.weight_version,
                decode_weight_version=served,
            )
        config = self._engine.model.config
        shape = config.shape
        expected = [shape.layers, 2, len(request.input_ids), shape.heads, shape.head_dim]
        if list(handoff.kv.shape) != expected or handoff.kv.dtype != config.dtype:
            raise HandoffFailed(
                f"KV for room {boot.room} has shape {list(handoff.kv.shape)} {handoff.kv.dtype}; "
                f"this node's model needs {expected} {config.dtype}"
            )
        return await self._engine.install(handoff.kv, handoff.logits)
