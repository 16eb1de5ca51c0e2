"""A control request as the router's routes take it: SGLang's body
(`{"tags": [...] | null, "drain": ...}`) on any route, and vLLM's query (`?tags=`, `?level=`,
`?mode=`) on the routes vLLM clients call, checked and merged here before any node is called.

The body goes to SGLang-speaking nodes verbatim, fields the router does not read included,
unless the query adds to it; then it is the merged object, re-serialized.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.datastructures import QueryParams

from pdfleet.vocabulary import Operation, Role

DrainMode = Literal["abort", "wait"]
MODES: tuple[str, ...] = get_args(DrainMode)
LEVELS = ("1", "2")
MAX_TIMEOUT_S = 86400


class BadControlRequest(ValueError):
    """The request's body or query is malformed (400); no node was called."""


class ControlBody(BaseModel):
    """SGLang's release/resume/flush body; fields the router does not read are forwarded."""

    model_config = ConfigDict(extra="allow")
    tags: list[str] | None = Field(
        None, min_length=1,
        description="Memory tags (weights, kv_cache, cuda_graph, weights_drafter); null: all.")
    drain: DrainMode | SkipJsonSchema[None] = Field(
        None, description="pdfleet nodes: wait for or abort in-flight requests on release.",
        json_schema_extra=lambda schema: schema.pop("default"))

    # The checks run before pydantic's own, so a bad body gets one plain sentence.
    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise ValueError("request body must be a JSON object")
        return payload

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_names(cls, tags: Any) -> Any:
        if tags is not None and (
            not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags)
        ):
            raise ValueError(f"tags must be null or a non-empty list of strings, got {tags!r}")
        return tags

    @field_validator("drain", mode="before")
    @classmethod
    def _a_mode(cls, drain: Any) -> Any:
        if drain not in MODES:
            raise ValueError(f"drain must be one of {', '.join(MODES)}; got {drain!r}")
        return drain

    @classmethod
    def parse(cls, raw: bytes) -> ControlBody | None:
        """The body of a control request; None when it is empty."""
        if not raw.strip():
            return None
        try:
            payload = json.loads(raw)
        except ValueError as exc:
            raise BadControlRequest(f"request body is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise BadControlRequest(str(exc.errors()[0]["ctx"]["error"])) from None


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
) -> ControlRequest:
    """The request for `operation` from a route's body and query; BadControlRequest if
    either is malformed or they disagree."""
    body = ControlBody.parse(raw)
    fields: dict[str, Any] = {}
    level = 1
    if operation in (Operation.RELEASE, Operation.RESUME):
        fields.update(_merge_tags(body, query))
    if operation is Operation.RELEASE:
        level = int(_choice(query, "level", LEVELS) or 1)
        fields.update(_merge_mode(body, query))
    merged = {**(body.model_dump(exclude_unset=True) if body is not None else {}), **fields}
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


def _query_tags(query: QueryParams) -> list[str] | None:
    """vLLM's `?tags=weights&tags=kv_cache`; a comma list works too. None: no tags given."""
    values = query.getlist("tags")
    if not values:
        return None
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        raise BadControlRequest("tags in the query must name at least one tag")
    return names


def _choice(query: QueryParams, name: str, choices: tuple[str, ...]) -> str | None:
    value = query.get(name)
    if value is not None and value not in choices:
        raise BadControlRequest(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _merge_tags(body: ControlBody | None, query: QueryParams) -> dict[str, Any]:
    """The query's tags as body fields; a body that names other tags is refused."""
    tags = _query_tags(query)
    if tags is None:
        return {}
    if body is not None and "tags" in body.model_fields_set:
        if body.tags is None or set(body.tags) != set(tags):
            raise BadControlRequest(
                f"the query's tags {tags} and the body's tags {body.tags} disagree")
    return {"tags": tags}


def _merge_mode(body: ControlBody | None, query: QueryParams) -> dict[str, Any]:
    """vLLM's `?mode=abort|wait` as the `drain` field pdfleet nodes read."""
    mode = _choice(query, "mode", MODES)
    if mode is None:
        return {}
    drain = body.drain if body is not None else None
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
