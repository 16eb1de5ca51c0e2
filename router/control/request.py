"""A control request as the router's routes take it: SGLang's body
(`{"tags": [...] | null, "drain": ...}`, `{"mode": ...}`, `{"model_path": ...}`, ...) on any
route, and vLLM's query (`?tags=`, `?level=`, `?mode=`) on the routes vLLM clients call,
checked and merged here before any node is called. A caller's mistake (a misspelt field, a
missing or mistyped field, an unknown tag or mode, a query key given twice) is a 400 here,
never a node's failure.

The body goes to SGLang-speaking nodes verbatim, fields the router does not read included,
unless the query or the route adds to it; then it is the merged object, re-serialized.
`/fanout/{path}` reads no body: it goes to every node as it came.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import ErrorDetails
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import (
    MEMORY_TAGS,
    WEIGHT_UPDATES,
    EngineName,
    MemoryTag,
    Operation,
    Role,
)

DrainMode = Literal["abort", "wait"]
MODES: tuple[str, ...] = get_args(DrainMode)
LEVELS = ("1", "2")
MAX_TIMEOUT_S = 86400
# How a pause treats in-flight requests, in SGLang's words (`wait`: pdfleet nodes drain them,
# as a release's drain does), and in vLLM's (`keep` is SGLang's `in_place`; vLLM has no
# `retract`, SGLang no `wait`).
PauseMode = Literal["abort", "retract", "in_place", "wait"]
SGLANG_PAUSE_MODES = ("abort", "retract", "in_place")
VLLM_PAUSE_MODES = ("abort", "wait", "keep")
PAUSE_FROM_VLLM: dict[str, PauseMode] = {"abort": "abort", "wait": "wait", "keep": "in_place"}
PAUSE_TO_VLLM = {"abort": "abort", "in_place": "keep", "wait": "wait"}
BOOLEANS = ("true", "false", "1", "0")  # what the router and vLLM both read as a bool
# vLLM clients repeat `tags` (`?tags=weights&tags=kv_cache`); any other key given twice is
# ambiguous, and which value would win is nobody's guess.
REPEATABLE_QUERY_KEYS = frozenset({"tags"})
# The query keys the router reads itself on every route, never forwarded to a node.
ROUTER_QUERY_KEYS = frozenset({"timeout", "role"})
# /fanout/{path} also filters by engine; every other key of its query reaches the nodes.
FANOUT_QUERY_KEYS = ROUTER_QUERY_KEYS | {"engine"}
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
        body, and not JSON) and the route needs none (no required fields)."""
        if not raw and not any(field.is_required() for field in cls.model_fields.values()):
            return None
        try:
            payload = json.loads(raw or b"{}")
        except ValueError as exc:
            raise BadControlRequest(f"request body is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise BadControlRequest(_described(exc.errors()[0])) from None


def _described(error: ErrorDetails) -> str:
    """One of pydantic's errors as a sentence naming the field: the validators' own message
    where one of ours raised it, else pydantic's, after the field's name."""
    raised = error.get("ctx", {}).get("error")
    if raised is not None:
        return str(raised)
    field = ".".join(str(part) for part in error["loc"])
    if error["type"] == "missing":
        return f"missing field {field!r}"
    return f"field {field!r}: {error['msg']}, got {error['input']!r}"


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


WeightVersion = Annotated[str | None, Field(
    description="The version the nodes serve afterwards; a node known to be at it already "
                "is left alone unless force=true.")]


class RefitBody(ControlBody):
    """A body of the refit's routes: types are checked as they are (no "1" for 1), since
    the node would refuse what the router let through."""

    model_config = ConfigDict(extra="allow", strict=True)


class PauseBody(RefitBody):
    """SGLang's pause_generation body."""

    mode: Literal["abort", "retract", "in_place"] = Field(
        "abort", description="In-flight requests: abort them, retract them to the queue (KV "
                             "recomputed on continue), or keep them in place (frozen).")

    @field_validator("mode", mode="before")
    @classmethod
    def _a_mode(cls, mode: Any) -> Any:
        if mode not in SGLANG_PAUSE_MODES:
            raise ValueError(
                f"mode must be one of {', '.join(SGLANG_PAUSE_MODES)}; got {mode!r}")
        return mode


class UpdateFromDiskBody(RefitBody):
    """SGLang's update_weights_from_disk body."""

    model_path: str = Field(description="The checkpoint each node loads.")
    load_format: str | None = None
    weight_version: WeightVersion = None
    abort_all_requests: bool = False


class InitWeightsGroupBody(RefitBody):
    """SGLang's init_weights_update_group body: the trainer's process group, which every
    target node joins with ranks of its own."""

    master_address: str
    master_port: int = Field(ge=1, le=65535)
    rank_offset: int = Field(ge=0, description="The first node's first rank (the trainer "
                                                "is rank 0, so normally 1).")
    world_size: int = Field(ge=1, description="rank_offset plus every target node's ranks.")
    group_name: str = "weight_update_group"
    backend: str = "nccl"


class UpdateFromDistributedBody(RefitBody):
    """SGLang's update_weights_from_distributed body: tensors the trainer broadcasts."""

    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = "weight_update_group"
    weight_version: WeightVersion = None


BODIES: dict[Operation, type[ControlBody]] = {
    Operation.RELEASE: ReleaseBody, Operation.RESUME: ResumeBody, Operation.FLUSH: ControlBody,
    Operation.PAUSE: PauseBody, Operation.CONTINUE: ControlBody,
    Operation.UPDATE_FROM_DISK: UpdateFromDiskBody,
    Operation.INIT_WEIGHTS_GROUP: InitWeightsGroupBody,
    Operation.UPDATE_FROM_DISTRIBUTED: UpdateFromDistributedBody,
}


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
    pause_mode: PauseMode | None = None  # what a pause does with in-flight requests
    # The query for nodes whose route takes one: vLLM's /pause, any /fanout path.
    query: str = ""
    path: str | None = None  # /fanout's node route, quoted
    engine: EngineName | None = None  # None: nodes of every engine
    model_path: str | None = None  # update from disk: the checkpoint
    weight_version: str | None = None  # a weight update: the version it sets, if named
    force: bool = False  # a weight update goes to nodes already at its version too
    rank_offset: int | None = None  # init weights group: the first node's first rank
    world_size: int | None = None  # init weights group: every rank, the trainer's included
    # Why the router ran it of its own accord (a pod joining a sleeping fleet); None: a caller
    # asked for it.
    cause: str | None = None


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
    if operation is Operation.PAUSE and dialect is EngineName.VLLM:
        return _vllm_pause(raw, query, content_type, authorization, default_timeout_s)
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
    pause_mode = merged.get("mode", "abort") if operation is Operation.PAUSE else None
    group = operation is Operation.INIT_WEIGHTS_GROUP
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
        pause_mode=pause_mode,
        query=_vllm_pause_query(pause_mode),
        model_path=merged.get("model_path") if operation is Operation.UPDATE_FROM_DISK else None,
        weight_version=merged.get("weight_version") if operation in WEIGHT_UPDATES else None,
        force=_force(query.get("force"), operation),
        rank_offset=merged.get("rank_offset") if group else None,
        world_size=merged.get("world_size") if group else None,
    )


def _vllm_pause(raw: bytes, query: QueryParams, content_type: str | None,
                authorization: str | None, default_timeout_s: float) -> ControlRequest:
    """vLLM's `/pause?mode=abort|wait|keep[&clear_cache=]`: its query goes to vLLM nodes as
    it came (less the router's keys), and SGLang-speaking nodes get the same mode in their
    words. An SGLang body (`{"mode": ...}`) works here too; with a query mode it must agree."""
    asked = _choice(query, "mode", VLLM_PAUSE_MODES)
    _choice(query, "clear_cache", BOOLEANS, case_blind=True)
    body = PauseBody.parse(raw)
    given = body.model_dump(mode="json", exclude_unset=True) if body is not None else {}
    if asked is not None and given.get("mode", PAUSE_FROM_VLLM[asked]) != PAUSE_FROM_VLLM[asked]:
        raise BadControlRequest(
            f"the query's mode {asked!r} and the body's mode {given['mode']!r} disagree")
    mode: PauseMode = PAUSE_FROM_VLLM[asked] if asked is not None else given.get("mode", "abort")
    forwarded = [(key, value) for key, value in query.multi_items()
                 if key not in ROUTER_QUERY_KEYS]
    if asked is None and "mode" in given and mode in PAUSE_TO_VLLM:
        forwarded.append(("mode", PAUSE_TO_VLLM[mode]))
    return ControlRequest(
        operation=Operation.PAUSE,
        body=json.dumps({**given, "mode": mode}).encode(),
        content_type="application/json",
        tags=None,
        role=_role(query.get("role")),
        timeout_s=_timeout(query.get("timeout"), default_timeout_s),
        authorization=authorization,
        pause_mode=mode,
        query=urlencode(forwarded),
    )


def fanout_request(
    path: str,
    raw: bytes,
    query: QueryParams,
    *,
    content_type: str | None,
    authorization: str | None,
    default_timeout_s: float,
) -> ControlRequest:
    """`POST /fanout/{path}`: `raw` and the query (less the router's keys) go to `path` on
    every target node as they came. Refusing the router's own routes is the route's part:
    it knows them."""
    for key in FANOUT_QUERY_KEYS:
        if len(query.getlist(key)) > 1:
            raise BadControlRequest(f"query key {key!r} is given more than once")
    return ControlRequest(
        operation=Operation.FANOUT,
        body=raw,
        content_type=content_type,
        tags=None,
        role=_role(query.get("role")),
        timeout_s=_timeout(query.get("timeout"), default_timeout_s),
        authorization=authorization,
        query=_forwarded(query, FANOUT_QUERY_KEYS),
        path=node_path(path),
        engine=_engine(query.get("engine")),
    )


def node_path(path: str) -> str:
    """`/fanout`'s path as the node route it names: no leading or trailing slash, quoted again
    (a `%3F` stays in the path, never becomes a query); empty or `..` is refused."""
    stripped = path.strip("/")
    if not stripped or any(part in ("", ".", "..") for part in stripped.split("/")) or (
            not stripped.isprintable()):
        raise BadControlRequest(f"fanout path must name a node route, got {path!r}")
    return quote(stripped)


def _forwarded(query: QueryParams, own: frozenset[str]) -> str:
    return urlencode([(key, value) for key, value in query.multi_items() if key not in own])


def _vllm_pause_query(mode: PauseMode | None) -> str:
    """The query of vLLM's /pause for a pause mode in SGLang's words; none for `retract`,
    which vLLM cannot do."""
    vllm_mode = None if mode is None else PAUSE_TO_VLLM.get(mode)
    return "" if vllm_mode is None else urlencode({"mode": vllm_mode})


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


def _choice(query: QueryParams, name: str, choices: tuple[str, ...],
            case_blind: bool = False) -> str | None:
    value = query.get(name)
    seen = value.lower() if value is not None and case_blind else value
    if seen is not None and seen not in choices:
        raise BadControlRequest(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return seen


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


def _engine(raw: str | None) -> EngineName | None:
    if raw is None:
        return None
    try:
        return EngineName(raw)
    except ValueError:
        raise BadControlRequest(
            f"engine must be one of {', '.join(EngineName)}; got {raw!r}") from None


def _force(raw: str | None, operation: Operation) -> bool:
    """`?force=true`: a weight update goes to nodes already at its version too."""
    if raw is None or operation not in WEIGHT_UPDATES:
        return False
    if raw not in ("true", "false"):
        raise BadControlRequest(f"force must be true or false; got {raw!r}")
    return raw == "true"


def _rollback(raw: str | None, operation: Operation) -> bool:
    if raw is None:
        return False
    if raw != "rollback":
        raise BadControlRequest(f"on_failure must be 'rollback', got {raw!r}")
    if operation is not Operation.RELEASE:
        raise BadControlRequest("on_failure=rollback applies to release only")
    return True
