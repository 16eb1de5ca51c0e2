"""SGLang's memory tags and the validation of a request's `tags` field."""

from __future__ import annotations

from typing import Any

from pdfleet.vocabulary import MemoryTag

ALL_TAGS: tuple[MemoryTag, ...] = tuple(MemoryTag)

# Contents of these tags survive a release (backed up and restored byte-exact); the others
# are discarded and come back zeroed.
PRESERVED_TAGS = frozenset({MemoryTag.WEIGHTS, MemoryTag.WEIGHTS_DRAFTER})

# Order of the steps within one release or resume. Discarded regions are released before the
# backed-up ones and the backed-up ones are resumed first: on an H100 the driver then hands the
# weights back pages that take the host-to-device restore at 48-50 GB/s, against 42 GB/s when
# the KV pool's pages were freed after the weights' (scripts/bench_node_memory.py,
# docs/benchmarks.md).
RELEASE_ORDER: tuple[MemoryTag, ...] = (
    MemoryTag.KV_CACHE, MemoryTag.CUDA_GRAPH, MemoryTag.WEIGHTS_DRAFTER, MemoryTag.WEIGHTS,
)
RESUME_ORDER: tuple[MemoryTag, ...] = tuple(reversed(RELEASE_ORDER))


def in_order(tags: list[MemoryTag], order: tuple[MemoryTag, ...]) -> list[MemoryTag]:
    return sorted(tags, key=order.index)


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
