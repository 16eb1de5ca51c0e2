"""The router's request and reply shapes as the OpenAPI document publishes them.

Control routes read their body raw (it is forwarded verbatim), so their request body
(`router.control.request.BODIES`, one model per operation) and query parameters are declared
here rather than derived from handler arguments. Their reply is
`router.control.report.ControlReport`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from pdfleet.vocabulary import (
    MEMORY_TAGS,
    NODE_MAX_BODY_BYTES,
    WEIGHT_UPDATES,
    EngineName,
    Operation,
    Role,
)
from router.config import VersionPolicy
from router.control.lock import RunningOperation
from router.control.report import ControlFailed
from router.control.request import (
    BODIES,
    LEVELS,
    MAX_TIMEOUT_S,
    MODES,
    VLLM_PAUSE_MODES,
)
from router.discovery.status import DiscoveryStatus
from router.registry import FleetSummary, NodeStatus

ERROR_MEANINGS = {
    400: "The request is malformed (body, tags or query; a weights-update group that does not "
         "fit the nodes; a /fanout path the router serves itself); no node was called.",
    401: "The admin token is missing or wrong.",
    404: "Not found.",
    409: "Another control operation is running, or the worker is already registered.",
    413: "The request body is larger than max_body_bytes (on a control route: larger than "
         f"a node accepts, {NODE_MAX_BODY_BYTES >> 20} MiB).",
    422: "A parameter or field has the wrong type or value.",
    502: "A node failed.",
    503: "No node can serve the request (the fleet is sleeping, down or empty).",
    504: "A node did not answer in time.",
}


class ErrorReply(BaseModel):
    detail: str


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorReply, "description": ERROR_MEANINGS[code]} for code in codes}


class NodeSleep(BaseModel):
    server: str
    released_tags: list[str] | None = Field(description="null: not known yet.")


class SleepState(BaseModel):
    is_sleeping: bool = Field(description="Any node has released memory.")
    all_sleeping: bool = Field(description="Every node has released memory.")
    nodes: list[NodeSleep]


class ClusterStatus(BaseModel):
    summary: FleetSummary
    control_operation: RunningOperation | None
    generated_at: float
    nodes: list[NodeStatus]
    weight_version: str | None = Field(description="The fleet's weight version; null: none.")
    version_policy: VersionPolicy
    discovery: DiscoveryStatus | None = None  # None: the fleet is the config's and the API's


def _query(name: str, schema: dict[str, Any], description: str,
           explode: bool | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "query", "required": False, "schema": schema,
                 "description": description}
    if explode is not None:
        parameter.update(style="form", explode=explode)
    return parameter


COMMON_QUERY = [
    _query("role", {"type": "string", "enum": [role.value for role in Role]},
           "Only nodes of this role."),
    _query("timeout", {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
           "Seconds for the whole fan-out (default control_timeout_s)."),
]
TAGS_QUERY = _query(
    "tags",
    {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(MEMORY_TAGS)}},
    "Tags, as vLLM's wake_up takes them (repeated, or a comma list); a body's tags must "
    "agree. None: the body's tags, or all.", explode=True)
RELEASE_QUERY = [
    TAGS_QUERY,
    _query("level", {"type": "integer", "enum": [int(level) for level in LEVELS]},
           "vLLM sleep level: 1 keeps weights in host memory, 2 discards them."),
    _query("mode", {"type": "string", "enum": list(MODES)},
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


VLLM_PAUSE_QUERY = [
    _query("mode", {"type": "string", "enum": list(VLLM_PAUSE_MODES)},
           "In-flight requests: abort them, wait for them, or keep them frozen (SGLang's "
           "in_place). Default abort."),
    _query("clear_cache", {"type": "boolean"},
           "vLLM nodes: clear the prefix cache after draining (sent to them as it is)."),
]
FORCE_QUERY = _query(
    "force", {"type": "boolean"},
    "Send the update to nodes already at its weight_version too (default: those are a no-op).")
ENGINE_QUERY = _query("engine", {"type": "string", "enum": [e.value for e in EngineName]},
                      "Only nodes of this engine.")


def _control_responses() -> dict[int | str, dict[str, Any]]:
    return {
        200: {"description": "Every node succeeded."},
        502: {"model": ControlFailed, "description": ERROR_MEANINGS[502]},
        **errors(400, 401, 409, 413, 422),
    }


def control_route(operation: Operation, dialect: EngineName) -> dict[str, Any]:
    """The OpenAPI fields of a control route for `operation` in `dialect`'s shape."""
    query = COMMON_QUERY + (
        VLLM_PAUSE_QUERY if operation is Operation.PAUSE and dialect is EngineName.VLLM
        else RELEASE_QUERY if operation is Operation.RELEASE
        else [TAGS_QUERY] if operation is Operation.RESUME
        else [FORCE_QUERY] if operation in WEIGHT_UPDATES
        else [])
    # A body is needed where the route has required fields (a weight update names its
    # weights); any other route takes none as the empty object.
    body = BODIES[operation]
    required = any(field.is_required() for field in body.model_fields.values())
    return {
        "responses": _control_responses(),
        "openapi_extra": {"parameters": query,
                          **json_body(body, required=required)},
    }


def fanout_route() -> dict[str, Any]:
    """The OpenAPI fields of `POST /fanout/{path}`."""
    return {
        "responses": _control_responses(),
        # The body goes to the nodes as it came, whatever it is: the router reads none.
        "openapi_extra": {"parameters": [*COMMON_QUERY, ENGINE_QUERY],
                          "requestBody": {"required": False, "content": {
                              "application/json": {"schema": {}}}}},
    }
