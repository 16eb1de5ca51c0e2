"""SGLang's PD hand-off fields, added to a generation request the way sgl-router adds them.

Prefill and decode get the same body: `bootstrap_host` and `bootstrap_port` name the prefill
node's KV bootstrap server, and `bootstrap_room` (random 63-bit) is the rendezvous both sides
use for this request's KV. A batched request carries one of each per item, so each field
becomes a list of that length; what counts as batched depends on the route, as in sgl-router:
`/generate` with a list of `text` or a list of `input_ids` lists, `/v1/completions` with a
list of prompts or `n` > 1 (one item per choice: each prompt `n` times, in the order of the
reply's `choices`), `/v1/chat/completions` with `n` > 1.
"""

from __future__ import annotations

import random
from typing import Any

from router.registry import Node


def batch_size(path: str, payload: dict[str, Any]) -> int | None:
    """How many items `payload` generates for, or None for a single (unbatched) request."""
    if path == "/v1/chat/completions":
        return _choices(payload)
    if path == "/v1/completions":
        items = payload.get("prompt")
        # A list of token ids is one prompt; a list of strings or token lists is a batch.
        if isinstance(items, list) and items and isinstance(items[0], str | list):
            return len(items) * (_choices(payload) or 1)
        return _choices(payload)
    text = payload.get("text")
    if text is not None:
        return len(text) if isinstance(text, list) else None
    ids = payload.get("input_ids")
    if isinstance(ids, list) and ids and isinstance(ids[0], list):
        return len(ids)
    return None


def _choices(payload: dict[str, Any]) -> int | None:
    """OpenAI's `n` when it asks for more than one choice per prompt."""
    n = payload.get("n")
    return n if type(n) is int and n > 1 else None


def add_bootstrap(path: str, payload: dict[str, Any], prefill: Node) -> None:
    """Set the hand-off fields on `payload` (in place) for a request served by `prefill`."""
    host = prefill.host
    port = prefill.bootstrap_port
    items = batch_size(path, payload)
    if items is None:
        payload["bootstrap_host"] = host
        payload["bootstrap_port"] = port
        payload["bootstrap_room"] = random.getrandbits(63)
    else:
        payload["bootstrap_host"] = [host] * items
        payload["bootstrap_port"] = [port] * items
        payload["bootstrap_room"] = [random.getrandbits(63) for _ in range(items)]
