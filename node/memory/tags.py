"""SGLang's memory tags and the validation of a request's `tags` field."""

from __future__ import annotations

from enum import Enum
from typing import Any


class MemoryTag(Enum):
    WEIGHTS = "weights"
    KV_CACHE = "kv_cache"
    CUDA_GRAPH = "cuda_graph"
    WEIGHTS_DRAFTER = "weights_drafter"


ALL_TAGS: tuple[MemoryTag, ...] = tuple(MemoryTag)

# Contents of these tags survive a release (backed up and restored byte-exact); the others
# are discarded and come back zeroed.
PRESERVED_TAGS = frozenset({MemoryTag.WEIGHTS, MemoryTag.WEIGHTS_DRAFTER})


def parse_tags(value: Any) -> list[MemoryTag] | None:
    """`None` means "all" (the caller decides what all is); anything else must name known tags.

    Raises ValueError with a message meant for the client.
    """
    if value is None:
        return None
    valid = ", ".join(t.value for t in ALL_TAGS)
    if not isinstance(value, list):
        raise ValueError(f"tags must be a list of tag names or null, got {type(value).__name__}")
    if not value:
        raise ValueError(f"tags must not be empty: name some of {valid}, or send null for all")
    names = [t.value if isinstance(t, MemoryTag) else t for t in value]
    unknown = [t for t in names if t not in {tag.value for tag in ALL_TAGS}]
    if unknown:
        raise ValueError(f"unknown tags {unknown}: valid tags are {valid}")
    return list(dict.fromkeys(MemoryTag(t) for t in names))
