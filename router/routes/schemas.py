"""The router's request and reply shapes as the OpenAPI document publishes them (SPEC 9).

Control routes read their body raw (it is forwarded verbatim), so their request body and
query parameters are declared here rather than derived from handler arguments. The reply
models mirror `router.fanout.FanoutReport.reply()`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from pdfleet.vocabulary import Operation

ERROR_MEANINGS = {
    400: "The request is malformed (body, tags or query); no node was called.",
    401: "The admin token is missing or wrong.",
    404: "Not found.",
    409: "Another control operation is running, or the worker is already registered.",
    413: "The request body is larger than max_body_bytes.",
    422: "A parameter or field has the wrong type or value.",
    502: "A node failed.",
    503: "No node can serve the request (the fleet is sleeping, down or empty).",
    504: "A node did not answer in time.",
}


class ErrorReply(BaseModel):
    detail: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorReply, "description": ERROR_MEANINGS[code]} for code in codes}


class ControlBody(BaseModel):
    """SGLang's release/resume/flush body; fields the router does not read are forwarded."""

    model_config = ConfigDict(extra="allow")
    tags: list[str] | None = Field(
        None, min_length=1,
        description="Memory tags (weights, kv_cache, cuda_graph, weights_drafter); null: all.")
    drain: Literal["wait", "abort"] | SkipJsonSchema[None] = Field(
        None, description="pdfleet nodes: wait for or abort in-flight requests on release.",
        json_schema_extra=lambda schema: schema.pop("default"))


class NodeOutcome(BaseModel):
    server: str
    role: str
    status: int | None = Field(description="The node's HTTP status; null: no call was needed.")
    elapsed_ms: float
    result: Any = Field(description="The node's JSON reply (at most 64 KiB), else null.")


class NodeFailure(BaseModel):
    server: str
    role: str
    elapsed_ms: float
    status: int | None = None
    detail: str | None = Field(None, description="The node's error body, capped.")
    error: str | None = Field(None, description="No HTTP answer: transport failure, or an "
                                                "operation the node's engine cannot do.")


class ControlReport(BaseModel):
    success: bool
    operation: str
    request_id: str
    total: int
    succeeded: int
    failed: int
    elapsed_ms: float
    nodes: list[NodeOutcome]


class ControlFailureDetail(BaseModel):
    message: str
    operation: str
    request_id: str
    total: int
    failed: int
    succeeded: list[str]
    failures: list[NodeFailure]
    nodes: list[NodeOutcome]
    elapsed_ms: float
    rollback: list[NodeOutcome | NodeFailure] | None = None


class ControlFailed(BaseModel):
    detail: ControlFailureDetail


class NodeSleep(BaseModel):
    server: str
    released_tags: list[str] | None = Field(description="null: not known yet.")


class SleepState(BaseModel):
    is_sleeping: bool = Field(description="Any node has released memory.")
    all_sleeping: bool = Field(description="Every node has released memory.")
    nodes: list[NodeSleep]


def _query(name: str, schema: dict[str, Any], description: str,
           explode: bool | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema,
                 "description": description}
    if explode is not None:
        parameter.update(style="form", explode=explode)
    return parameter


COMMON_QUERY = [
    _query("role", {"type": "string", "enum": ["prefill", "decode", "mixed"]},
           "Only nodes of this role."),
    _query("timeout", {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
           "Seconds for the whole fan-out (default control_timeout_s)."),
]
TAGS_QUERY = _query(
    "tags", {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "Tags, as vLLM's wake_up takes them (repeated, or a comma list); a body's tags must "
    "agree. None: the body's tags, or all.", explode=True)
RELEASE_QUERY = [
    TAGS_QUERY,
    _query("level", {"type": "integer", "enum": [1, 2]},
           "vLLM sleep level: 1 keeps weights in host memory, 2 discards them."),
    _query("mode", {"type": "string", "enum": ["abort", "wait"]},
           "In-flight requests: abort them or wait for them (pdfleet's drain)."),
    _query("on_failure", {"type": "string", "enum": ["rollback"]},
           "Resume the nodes that released when any node failed."),
]


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its definitions inlined, to stand in an OpenAPI operation."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


def json_body(model: type[BaseModel], required: bool) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": body_schema(model)}}}}


def control_route(operation: str) -> dict[str, Any]:
    """The OpenAPI fields of a control route for `operation`."""
    by_operation = {Operation.RELEASE: RELEASE_QUERY, Operation.RESUME: [TAGS_QUERY],
                    Operation.FLUSH: []}
    query = COMMON_QUERY + by_operation[operation]
    return {
        "responses": {
            200: {"model": ControlReport, "description": "Every node succeeded."},
            502: {"model": ControlFailed, "description": ERROR_MEANINGS[502]},
            **errors(400, 401, 409, 413, 422),
        },
        "openapi_extra": {"parameters": query, **json_body(ControlBody, required=False)},
    }
