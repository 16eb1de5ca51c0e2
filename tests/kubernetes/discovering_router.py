"""A real `pdfleet router` process that discovers pods through an API server."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from pdfleet.ports import free_port
from tests.procs import Process, wait_http_ok

NAMESPACE = "rl"
SELECTORS = {"prefill": "app=sglang,role=prefill", "decode": "app=sglang,role=decode"}


class DiscoveringRouter:
    """A router whose fleet config discovers pods through the API server `kubeconfig` names
    (written to a file), beside the static `nodes`; `router` adds to the router's settings
    and `discovery` to its Kubernetes discovery section; `workers` > 1 runs that many router
    processes on the port."""

    def __init__(self, tmp: Path, kubeconfig: dict[str, Any], nodes: list[dict[str, Any]],
                 router: dict[str, Any] | None = None, workers: int = 1,
                 **discovery: Any) -> None:
        self.port = free_port()
        kubeconfig_path = tmp / f"kubeconfig-{self.port}.yaml"
        kubeconfig_path.write_text(yaml.safe_dump(kubeconfig))
        config = {
            "router": {"port": self.port, "poll_interval_s": 0.5, **(router or {})},
            "nodes": nodes,
            "discovery": {"kubernetes": {"namespace": NAMESPACE,
                                         "kubeconfig": str(kubeconfig_path),
                                         "selectors": SELECTORS, **discovery}},
        }
        self.config_path = tmp / f"router-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process([sys.executable, "-m", "pdfleet", "router", "--config",
                                str(self.config_path), "--workers", str(workers)])
        wait_http_ok(f"{self.url}/health", self.process)

    def stop(self) -> int:
        return self.process.stop()
