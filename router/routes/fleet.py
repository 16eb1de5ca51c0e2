"""Fleet state: health, per-node status, weight versions and the worker registry."""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pdfleet.vocabulary import DEFAULT_ENGINE, EngineName, Role
from router.config import NodeSpec, describe_validation_error
from router.peers import MembershipBusy
from router.registry import NodeSource, Unknown
from router.routes.schemas import ClusterStatus, errors, json_body
from router.state import State

router = APIRouter()


# http(s)://host[:port], host a DNS name or an IPv4 address, spelled out so that the published
# schema says exactly which URLs POST /workers takes (IPv6 nodes go in the config file).
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_NAME = rf"({_LABEL}\.)*[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?"
WORKER_URL = rf"^https?://({_NAME}|({_OCTET}\.){{3}}{_OCTET})(:{_PORT})?/?$"


class WorkerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(pattern=WORKER_URL)
    role: Role
    bootstrap_port: int | None = Field(None, ge=1, le=65535)
    engine: EngineName = DEFAULT_ENGINE

    @field_validator("bootstrap_port", mode="before")
    @classmethod
    def _not_a_bool(cls, port: object) -> object:
        # JSON true is not a port, though Python's bool is an int.
        if isinstance(port, bool):
            raise ValueError("must be an integer")
        return port


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


class NodeWeightVersion(BaseModel):
    server: str
    weight_version: str | Unknown | None = Field(
        description="The weights it serves; null: it names none.")
    stale: bool = Field(description="Not at the fleet's weight version.")


class FleetWeightVersion(BaseModel):
    weight_version: str | None = Field(
        description="The fleet's: the version the latest weight update through this router "
                    "named, else the one most nodes report; null: none.")
    nodes: list[NodeWeightVersion]


@router.get("/cluster/status")
async def cluster_status(state: State) -> ClusterStatus:
    registry = state.registry
    fleet_version = registry.weight_version
    return ClusterStatus(
        summary=registry.summary(),
        control_operation=state.control.running(),
        generated_at=time.time(),
        nodes=[n.status_view(stale=not registry.current(n)) for n in registry.all()],
        weight_version=fleet_version,
        version_policy=state.settings.version_policy,
        discovery=None if state.discovery is None else state.discovery.status(),
    )


@router.get("/get_weight_version")
async def get_weight_version(state: State) -> FleetWeightVersion:
    """The fleet's weight version (what SGLang's route of the name answers for one server),
    and each node's, with the nodes not at the fleet's marked stale."""
    fleet_version = state.registry.weight_version
    return FleetWeightVersion(weight_version=fleet_version, nodes=[
        NodeWeightVersion(server=view.server, weight_version=view.weight_version,
                          stale=view.stale)
        for view in (n.status_view(stale=not state.registry.current(n))
                     for n in state.registry.all())])


@router.get("/workers")
async def list_workers(state: State) -> dict:
    return {"workers": [
        {"url": n.url, "role": n.role.value, "bootstrap_port": n.bootstrap_port,
         "engine": n.engine}
        for n in state.registry.all()
    ]}


@router.post("/workers", status_code=201, openapi_extra=json_body(WorkerIn, required=True),
             responses=errors(400, 401, 409, 413, 422))
async def add_worker(request: Request, state: State) -> dict:
    state.admin(request)
    try:
        payload = json.loads(await request.body())
    except ValueError as exc:
        raise HTTPException(400, detail=f"request body is not valid JSON: {exc}") from None
    try:
        worker = WorkerIn.model_validate(payload)
        spec = NodeSpec(url=worker.url, role=worker.role, bootstrap_port=worker.bootstrap_port,
                        engine=worker.engine)
    except ValidationError as exc:
        raise HTTPException(422, detail=describe_validation_error(exc)) from None
    try:
        node = await state.peers.add_node(spec)
    except KeyError:
        raise HTTPException(409, detail=f"worker {spec.url} is already registered") from None
    except MembershipBusy as exc:
        raise HTTPException(503, detail=str(exc)) from None
    # Polled now: while the fleet has a weight version, a node serves once its own is known.
    state.poller.refresh([node])
    return {"added": node.url, "role": node.role.value, "bootstrap_port": node.bootstrap_port,
            "engine": node.engine}


@router.delete("/workers", responses=errors(401, 404, 409, 422))
async def remove_worker(
    request: Request, url: str, state: State
) -> dict:
    state.admin(request)
    found = state.registry.get(url)
    if found is not None and found.source is NodeSource.KUBERNETES:
        raise HTTPException(409, detail=f"worker {found.url} is pod {found.pod}, discovered from "
                            "Kubernetes: the cluster owns it; scale or delete the pod instead")
    try:
        node = await state.peers.remove_node(url)
    except KeyError:
        raise HTTPException(404, detail=f"worker {url} is not registered") from None
    except MembershipBusy as exc:
        raise HTTPException(503, detail=str(exc)) from None
    return {"removed": node.url}
