"""`/_admin/faults`: add a rule (POST, a JSON object with the rule's keys), list the rules with
their remaining counts (GET), delete them all (DELETE). Admin token when one is set."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from node.errors import BadRequest
from node.faults.inject import ADMIN_PATH
from node.faults.rules import FaultRuleError, FaultSet, rule_from_mapping
from node.http.body import read_json_object, require_admin

MAX_RULE_BYTES = 64 << 10


def admin_router(faults: FaultSet, admin_token: str | None) -> APIRouter:
    router = APIRouter()

    @router.get(ADMIN_PATH)
    async def list_faults(request: Request) -> dict[str, Any]:
        require_admin(request, admin_token)
        return {"rules": faults.views()}

    @router.post(ADMIN_PATH, status_code=201)
    async def add_fault(request: Request) -> dict[str, Any]:
        require_admin(request, admin_token)
        values = await read_json_object(request, max_bytes=MAX_RULE_BYTES)
        try:
            armed = faults.add(rule_from_mapping(values))
        except FaultRuleError as error:
            raise BadRequest(str(error), key=error.key) from None
        return {"added": armed.view()}

    @router.delete(ADMIN_PATH)
    async def clear_faults(request: Request) -> dict[str, Any]:
        require_admin(request, admin_token)
        return {"deleted": faults.clear()}

    return router
