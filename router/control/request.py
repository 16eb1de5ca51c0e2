"""A control request as the router's routes take it: SGLang's body
(`{"tags": [...] | null, "drain": ...}`) on any route, and vLLM's query (`?tags=`, `?level=`,
`?mode=`) on the routes vLLM clients call, checked and merged here before any node is called.
A caller's mistake (a misspelt field, an unknown tag, a query key given twice) is a 400 here,
never a node's failure.

The body goes to SGLang-speaking nodes verbatim, fields the router does not read included,
unless the query or the route adds to it; then it is the merged object, re-serialized.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import MEMORY_TAGS, EngineName, MemoryTag, Operation, Role

DrainMode = Literal["abort", "wait"]
MODES: tuple[str, ...] = get_args(DrainMode)
LEVELS = ("1", "2")
MAX_TIMEOUT_S = 86400
# vLLM clients repeat `tags` (`?tags=weights&tags=kv_cache`); any other key given twice is
# ambiguous, and which value would win is nobody's guess.
REPEATABLE_QUERY_KEYS = frozenset({"tags"})
# A body field this close to one of the route's fields is taken for a misspelling of it.
NEAR_MISS_EDITS = 2
# vLLM has two tags, SGLang four. On vLLM's routes, an SGLang-speaking node's CUDA graphs and
# draft weights sleep and wake with the KV cache: a vLLM client that wakes `kv_cache` last
# means the node to be awake, and a real SGLang server would otherwise keep its graphs unmapped.
KV_CACHE_FOLLOWERS = (MemoryTag.CUDA_GRAPH.value, MemoryTag.WEIGHTS_DRAFTER.value)


class BadControlRequest(ValueError):
    """The request's body or query is malformed (400); no node was called."""


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions from a to b."""
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def near_miss(name: str, fields: list[str]) -> str | None:
    """The field `name` is probably a misspelling of (case ignored), if any."""
    distances = [(edit_distance(name.lower(), field.lower()), field) for field in fields]
    closest = min(distances, default=None)
    return closest[1] if closest is not None and closest[0] <= NEAR_MISS_EDITS else None


def check_tags(tags: list[str]) -> None:
    unknown = [tag for tag in tags if tag not in MEMORY_TAGS]
    if unknown:
        raise BadControlRequest(
            f"unknown tags {unknown}: valid tags are {', '.join(MEMORY_TAGS)}")


class ControlBody(BaseModel):
    """A control body in SGLang's shape; as such, flush's (no fields of its own). Fields the
    router does not read are forwarded, unless they look like a misspelt field of the route."""

    model_config = ConfigDict(extra="allow")

    # The checks run before pydantic's own, so a bad body gets one plain sentence.
    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise ValueError("request body must be a JSON object")
        fields = list(cls.model_fields)
        for name in payload:
            if name not in fields and (meant := near_miss(str(name), fields)):
                raise ValueError(f"unknown field {name!r} (did you mean {meant!r}?)")
        return payload

    @classmethod
    def parse(cls, raw: bytes) -> ControlBody | None:
        """The body of a control request; None when there is none (0 bytes: whitespace is a
        body, and not JSON)."""
        if not raw:
            return None
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise BadControlRequest(f"request body is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise BadControlRequest(str(exc.errors()[0]["ctx"]["error"])) from None


class ResumeBody(ControlBody):
    """SGLang's resume body."""

    tags: list[MemoryTag] | None = Field(
        None, min_length=1,
        description="Memory tags (weights, kv_cache, cuda_graph, weights_drafter); null: all.")

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_names(cls, tags: Any) -> Any:
        if tags is not None and (
            not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags)
        ):
            raise ValueError(f"tags must be null or a non-empty list of strings, got {tags!r}")
        if tags is not None:
            check_tags(tags)
        return tags


class ReleaseBody(ResumeBody):
    """SGLang's release body, with pdfleet nodes' drain fields."""

    drain: DrainMode | SkipJsonSchema[None] = Field(
        None, description="pdfleet nodes: wait for or abort in-flight requests on release.",
        json_schema_extra=lambda schema: schema.pop("default"))
    drain_timeout_s: float | None = Field(
        None, ge=0, description="pdfleet nodes: seconds to wait for in-flight requests "
                                "(null: the node's own default).")

    @field_validator("drain", mode="before")
    @classmethod
    def _a_mode(cls, drain: Any) -> Any:
        if drain not in MODES:
            raise ValueError(f"drain must be one of {', '.join(MODES)}; got {drain!r}")
        return drain

    @field_validator("drain_timeout_s", mode="before")
    @classmethod
    def _seconds(cls, seconds: Any) -> Any:
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0
        ):
            raise ValueError(f"drain_timeout_s must be null or seconds >= 0; got {seconds!r}")
        return seconds


BODIES: dict[Operation, type[ControlBody]] = {
    Operation.RELEASE: ReleaseBody, Operation.RESUME: ResumeBody, Operation.FLUSH: ControlBody}


@dataclass(frozen=True, slots=True)
class ControlRequest:
    operation: Operation
    body: bytes  # the SGLang-shaped body
    content_type: str | None
    tags: list[str] | None  # None: every tag
    role: Role | None  # None: every node
    timeout_s: float  # for the whole fan-out
    rollback: bool = False  # resume the nodes that released when any node failed
    authorization: str | None = None
    level: int = 1  # vLLM's sleep level
    mode: DrainMode | None = None  # what a release does with in-flight requests


def control_request(
    operation: Operation,
    raw: bytes,
    query: QueryParams,
    *,
    content_type: str | None,
    authorization: str | None,
    default_timeout_s: float,
    dialect: EngineName = EngineName.SGLANG,
) -> ControlRequest:
    """The request for `operation` from a route's body and query; BadControlRequest if
    either is malformed or they disagree. `dialect` is the API whose route was called."""
    _single_values(query)
    body = BODIES[operation].parse(raw)
    given = body.model_dump(mode="json", exclude_unset=True) if body is not None else {}
    fields: dict[str, Any] = {}
    level = 1
    if operation in (Operation.RELEASE, Operation.RESUME):
        fields.update(_merge_tags(given, query))
        if dialect is EngineName.VLLM:
            fields.update(_with_kv_cache_followers({**given, **fields}.get("tags")))
    if operation is Operation.RELEASE:
        level = int(_choice(query, "level", LEVELS) or 1)
        fields.update(_merge_mode(given, query))
    merged = {**given, **fields}
    return ControlRequest(
        operation=operation,
        body=json.dumps(merged).encode() if fields else raw,
        content_type="application/json" if fields else content_type,
        tags=merged.get("tags"),
        role=_role(query.get("role")),
        timeout_s=_timeout(query.get("timeout"), default_timeout_s),
        rollback=_rollback(query.get("on_failure"), operation),
        authorization=authorization,
        level=level,
        mode=merged.get("drain") if operation is Operation.RELEASE else None,
    )


def _single_values(query: QueryParams) -> None:
    for key in query:
        if key not in REPEATABLE_QUERY_KEYS and len(query.getlist(key)) > 1:
            raise BadControlRequest(f"query key {key!r} is given more than once")


def _with_kv_cache_followers(tags: list[str] | None) -> dict[str, Any]:
    """The tags with kv_cache's followers added, as a body field; {} when nothing is added."""
    if tags is None or MemoryTag.KV_CACHE.value not in tags:
        return {}
    missing = [tag for tag in KV_CACHE_FOLLOWERS if tag not in tags]
    return {"tags": [*tags, *missing]} if missing else {}


def _query_tags(query: QueryParams) -> list[str] | None:
    """vLLM's `?tags=weights&tags=kv_cache`; a comma list works too. None: no tags given."""
    values = query.getlist("tags")
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise BadControlRequest("tags in the query must name at least one tag")
    check_tags(names)
    return names


def _choice(query: QueryParams, name: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in choices:
        raise BadControlRequest(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _merge_tags(given: dict[str, Any], query: QueryParams) -> dict[str, Any]:
    """The query's tags as body fields; a body (`given`, its fields) that names other tags
    is refused."""
    tags = _query_tags(query)
    if tags is None:
        return {}
    if "tags" in given:
        if given["tags"] is None or set(given["tags"]) != set(tags):
            raise BadControlRequest(
                f"the query's tags {tags} and the body's tags {given['tags']} disagree")
    return {"tags": tags}


def _merge_mode(given: dict[str, Any], query: QueryParams) -> dict[str, Any]:
    """vLLM's `?mode=abort|wait` as the `drain` field pdfleet nodes read."""
    mode = _choice(query, "mode", MODES)
    if mode is None:
        return {}
    drain = given.get("drain")
    if drain is not None and drain != mode:
        raise BadControlRequest(
            f"the query's mode {mode!r} and the body's drain {drain!r} disagree")
    return {"drain": mode}


def _timeout(raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_TIMEOUT_S):
        raise BadControlRequest(f"timeout must be seconds in (0, {MAX_TIMEOUT_S}], got {raw!r}")
    return value


def _role(raw: str | None) -> Role | None:
    if raw is None:
        return None
    try:
        return Role(raw)
    except ValueError:
        raise BadControlRequest(
            f"role must be one of {', '.join(Role)}; got {raw!r}") from None


def _rollback(raw: str | None, operation: Operation) -> bool:
    if raw is None:
        return False
    if raw != "rollback":
        raise BadControlRequest(f"on_failure must be 'rollback', got {raw!r}")
    if operation is not Operation.RELEASE:
        raise BadControlRequest("on_failure=rollback applies to release only")
    return True
