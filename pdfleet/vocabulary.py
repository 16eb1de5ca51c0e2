"""The wire vocabulary: every name the router, the nodes, the CLI and the chaos harness agree
on over HTTP. A leaf: it imports nothing of ours, so anything may import it.

Adding a control operation starts here (`Operation`); the modules that do something new with
it follow, and nothing else has to change.
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus


class Operation(StrEnum):
    """A control operation, by the route (SGLang's name) that carries it to a node."""

    RELEASE = "release_memory_occupation"
    RESUME = "resume_memory_occupation"
    FLUSH = "flush_cache"
    # The RL refit: pause generation, take new weights, continue.
    PAUSE = "pause_generation"
    CONTINUE = "continue_generation"
    UPDATE_FROM_DISK = "update_weights_from_disk"
    INIT_WEIGHTS_GROUP = "init_weights_update_group"
    UPDATE_FROM_DISTRIBUTED = "update_weights_from_distributed"
    # Any other engine route, fanned out as it is (`POST /fanout/{path}`).
    FANOUT = "fanout"

    @property
    def short(self) -> str:
        """The name a person types and reads: `release`, `resume`, `flush`."""
        return _SHORT[self]

    @classmethod
    def from_short(cls, name: str) -> Operation:
        for operation, short in _SHORT.items():
            if short == name:
                return operation
        raise ValueError(f"unknown operation {name!r}: one of {', '.join(_SHORT.values())}")


_SHORT = {
    Operation.RELEASE: "release",
    Operation.RESUME: "resume",
    Operation.FLUSH: "flush",
    Operation.PAUSE: "pause",
    Operation.CONTINUE: "continue",
    Operation.UPDATE_FROM_DISK: "update",
    Operation.INIT_WEIGHTS_GROUP: "init_group",
    Operation.UPDATE_FROM_DISTRIBUTED: "update_distributed",
    Operation.FANOUT: "fanout",
}
# The operations that change which weights a node serves.
WEIGHT_UPDATES = frozenset({Operation.UPDATE_FROM_DISK, Operation.UPDATE_FROM_DISTRIBUTED})


class MemoryTag(StrEnum):
    """SGLang's memory-saver tags. A release with tags null releases all of them."""

    WEIGHTS = "weights"
    KV_CACHE = "kv_cache"
    CUDA_GRAPH = "cuda_graph"
    WEIGHTS_DRAFTER = "weights_drafter"


MEMORY_TAGS: tuple[str, ...] = tuple(tag.value for tag in MemoryTag)

# The largest request body a node accepts (its `max_body_bytes` default). The router refuses a
# larger control body itself, since every node would refuse it.
NODE_MAX_BODY_BYTES = 16 << 20


class Role(StrEnum):
    PREFILL = "prefill"
    DECODE = "decode"
    MIXED = "mixed"


class EngineName(StrEnum):
    """The HTTP API a node speaks. pdfleet's own nodes speak SGLang's."""

    SGLANG = "sglang"
    VLLM = "vllm"


DEFAULT_ENGINE = EngineName.SGLANG

# Headers we define. A node's 503 carrying SLEEPING_HEADER says the node released memory,
# so a router that did not put it to sleep can tell it from any other 503.
SLEEPING_HEADER = "X-Pdfleet-Sleeping"
# Which of `pdfleet router --workers N`'s processes answered.
WORKER_HEADER = "X-Pdfleet-Worker"
# One id per control operation, the same on every node it reaches.
REQUEST_ID_HEADER = "X-Request-Id"
# The weight version that served a generation reply (SGLang's `meta_info.weight_version`).
WEIGHT_VERSION_HEADER = "X-Pdfleet-Weight-Version"
# Where the admin token comes from, for router, node and CLI alike.
ADMIN_TOKEN_ENV = "PDFLEET_ADMIN_TOKEN"


def openai_error_type(status: int) -> str:
    """The `type` of an OpenAI-shaped error for an HTTP status, as vLLM names it (404 ->
    `NotFoundError`): router and node answer generation errors with the same names."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "Error"
    return phrase.title().replace(" ", "").replace("-", "") + "Error"
