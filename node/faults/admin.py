"""`/_admin/faults`: add a rule (POST, a JSON object with the rule's keys), list the rules with
their remaining counts (GET), delete them all (DELETE). Admin token when one is set."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request

from node.api.body import require_admin
from node.errors import BadRequest, PayloadTooLarge
from node.faults.inject import ADMIN_PATH
from node.faults.rules import FaultRuleError, FaultSet, rule_from_mapping

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
        raw = await request.body()
        if len(raw) > MAX_RULE_BYTES:
            raise PayloadTooLarge(f"a fault rule is at most {MAX_RULE_BYTES} bytes")
        try:
            values = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise BadRequest(f"request body is not valid JSON: {error}") from None
        if not isinstance(values, dict):
            raise BadRequest("send the rule as a JSON object, e.g. "
                             '{"route": "/flush_cache", "kind": "status", "code": 500}')
        try:
            rule = faults.add(rule_from_mapping(values))
        except FaultRuleError as error:
            raise BadRequest(str(error), key=error.key) from None
        return {"added": rule.view()}

    @router.delete(ADMIN_PATH)
    async def clear_faults(request: Request) -> dict[str, Any]:
        require_admin(request, admin_token)
        return {"deleted": faults.clear()}

    return router
