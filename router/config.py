"""Fleet configuration: the YAML file `pdfleet router` and `pdfleet up` read.

Every model forbids unknown keys, so a typo is an error that names the key
instead of a setting silently ignored.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    ValidationError,
    field_validator,
    model_validator,
)

from pdfleet.vocabulary import DEFAULT_ENGINE, EngineName, Role
from router.discovery.selectors import LabelSelector, parse_selector


class Policy(StrEnum):
    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LEAST_OUTSTANDING = "least_outstanding"


class VersionPolicy(StrEnum):
    LATEST = "latest"
    ANY = "any"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RouterSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    policy: Policy = Policy.ROUND_ROBIN
    control_timeout_s: float = Field(120.0, gt=0)
    error_detail_bytes: int = Field(500, ge=1, le=1 << 20)
    poll_interval_s: float = Field(2.0, gt=0)
    poll_timeout_s: float = Field(2.0, gt=0)
    request_timeout_s: float = Field(3600.0, gt=0)
    max_body_bytes: int = Field(64 << 20, ge=1024)
    # latest: serve only nodes at the fleet's weight version; any: every version (a PD pair
    # is never split across versions either way).
    version_policy: VersionPolicy = VersionPolicy.LATEST


class NodeSpec(_Strict):
    url: str
    role: Role
    bootstrap_port: int | None = Field(None, ge=1, le=65535)
    # The node's HTTP API: sglang (also pdfleet's own nodes) or vllm.
    engine: EngineName = DEFAULT_ENGINE
    # Ranks the node takes in a weights-update group (its tensor-parallel size).
    ranks: int = Field(1, ge=1)
    # `pdfleet node` options for nodes that `pdfleet up` starts on this machine.
    launch: dict[str, Any] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parsed = HttpUrl(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError("node url must be http(s)://host:port")
        return url.rstrip("/")

    @field_validator("engine", mode="before")
    @classmethod
    def _known_engine(cls, engine: object) -> object:
        names = [e.value for e in EngineName]
        if engine not in names:
            raise ValueError(f"engine must be one of {', '.join(names)}; got {engine!r}")
        return engine

    @model_validator(mode="after")
    def _launched_nodes_speak_sglang(self) -> NodeSpec:
        if self.launch is not None and self.engine != DEFAULT_ENGINE:
            raise ValueError(f"launch starts a pdfleet node, whose API is {DEFAULT_ENGINE}; "
                             f"a node with engine {self.engine} is started by its own server")
        return self


class OnJoin(StrEnum):
    MATCH_FLEET = "match_fleet"  # a node joining a sleeping fleet is released like it first
    NONE = "none"


class RoleSelectors(_Strict):
    """A label selector (Kubernetes' string form) per role; a role without one is not
    discovered."""

    prefill: str | None = None
    decode: str | None = None
    mixed: str | None = None

    @field_validator("prefill", "decode", "mixed")
    @classmethod
    def _a_selector(cls, text: str | None) -> str | None:
        if text is not None:
            parse_selector(text)
        return text

    def by_role(self) -> dict[Role, LabelSelector]:
        return {role: parse_selector(text) for role in Role
                if (text := getattr(self, role.value)) is not None}


class KubernetesDiscovery(_Strict):
    # None: the namespace of the pod the router runs in, else "default".
    namespace: str | None = None
    # None: the in-cluster service account; else a kubeconfig file.
    kubeconfig: str | None = None
    selectors: RoleSelectors
    port: int = Field(30000, ge=1, le=65535)  # annotation pdfleet.io/port overrides
    engine: EngineName = DEFAULT_ENGINE  # annotation pdfleet.io/engine overrides
    resync_s: float = Field(60.0, gt=0)  # full re-list period
    on_join: OnJoin = OnJoin.MATCH_FLEET

    @model_validator(mode="after")
    def _some_role(self) -> KubernetesDiscovery:
        if not self.selectors.by_role():
            raise ValueError("selectors: give a selector for at least one role")
        return self


class DiscoverySettings(_Strict):
    kubernetes: KubernetesDiscovery | None = None


class FleetConfig(_Strict):
    router: RouterSettings = RouterSettings()
    nodes: list[NodeSpec] = []
    # Nodes found at run time, beside the static `nodes`.
    discovery: DiscoverySettings = DiscoverySettings()

    @field_validator("nodes")
    @classmethod
    def _unique_urls(cls, nodes: list[NodeSpec]) -> list[NodeSpec]:
        seen: set[str] = set()
        for node in nodes:
            if node.url in seen:
                raise ValueError(f"node {node.url} is listed twice")
            seen.add(node.url)
        return nodes


class ConfigError(Exception):
    """A fleet config that cannot be used; the message names the file and the key."""


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{where}'")
        else:
            parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_config(data: Any, source: str = "config") -> FleetConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """The YAML document in `path`; `error` (naming the file) when it cannot be read or
    parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: invalid YAML ({exc})") from None


def load_config(path: str | Path) -> FleetConfig:
    return parse_config(read_yaml(path, ConfigError), str(path))
