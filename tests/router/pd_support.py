"""Shared steps of the PD routing tests: fleet specs, what a stub node received, polling."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

BOOTSTRAP_PORT = 8998


def pd_fleet(prefill: list[str], decode: list[str], mixed: tuple[str, ...] = (),
             bootstrap_port: int | None = BOOTSTRAP_PORT) -> list[dict[str, Any]]:
    return ([{"url": u, "role": "prefill", "bootstrap_port": bootstrap_port} for u in prefill]
            + [{"url": u, "role": "decode"} for u in decode]
            + [{"url": u, "role": "mixed"} for u in mixed])


async def calls(http: aiohttp.ClientSession, stub_url: str) -> list[dict[str, Any]]:
    """Every POST the stub received, its body parsed as JSON where it is JSON."""
    async with http.get(f"{stub_url}/_stub/requests") as resp:
        entries = await resp.json()
    for entry in entries:
        try:
            entry["json"] = json.loads(entry["body"])
        except ValueError:
            entry["json"] = None
    return entries


async def cluster_nodes(http: aiohttp.ClientSession, router_url: str) -> dict[str, Any]:
    async with http.get(f"{router_url}/cluster/status") as resp:
        return {n["server"]: n for n in (await resp.json())["nodes"]}


async def disconnected(http: aiohttp.ClientSession, stub_url: str) -> bool:
    """Whether the stub's last call ended with its client going away."""
    entries = await calls(http, stub_url)
    return bool(entries) and entries[-1].get("disconnected", False)


async def no_outstanding(http: aiohttp.ClientSession, router_url: str) -> bool:
    return all(n["outstanding"] == 0 for n in (await cluster_nodes(http, router_url)).values())
