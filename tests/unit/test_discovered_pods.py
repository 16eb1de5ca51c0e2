"""Which pod is which node, and how a discovered node's membership moves: pure logic."""

from __future__ import annotations

from typing import Any

import pytest
from lightkube.resources.core_v1 import Pod

from pdfleet.vocabulary import Role
from router.config import (
    ConfigError,
    KubernetesDiscovery,
    NodeSpec,
    OnJoin,
    RouterSettings,
    parse_config,
)
from router.control.lock import LocalControlLock
from router.control.plane import ControlPlane
from router.discovery.membership import DiscoveredFleet, fleet_released_tags
from router.discovery.pods import PodNode, PodRejected, pod_node
from router.http.pool import new_session
from router.registry import FleetRegistry, Health, NodePhase

SETTINGS = KubernetesDiscovery.model_validate(
    {"selectors": {"decode": "app=sglang"}, "port": 30000, "engine": "sglang"})


def make_pod(*, phase: str = "Running", ready: str = "True", ip: str | None = "10.0.0.7",
             deleting: bool = False, **annotations: str) -> Pod:
    metadata: dict[str, Any] = {"name": "decode-0", "namespace": "rl",
                                "annotations": annotations}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase,
                              "conditions": [{"type": "Ready", "status": ready}]}
    if ip is not None:
        status["podIP"] = ip
    return Pod.from_dict({"metadata": metadata, "status": status})


def test_a_running_ready_addressed_pod_is_a_node_at_the_default_port():
    found = pod_node(make_pod(), Role.DECODE, SETTINGS)
    assert found is not None and not found.draining
    assert (found.pod, found.spec.url, found.spec.role, found.spec.engine) == (
        "decode-0", "http://10.0.0.7:30000", Role.DECODE, "sglang")


@pytest.mark.parametrize("pod", [make_pod(phase="Pending"), make_pod(ready="False"),
                                 make_pod(ip=None)], ids=["pending", "not_ready", "no_ip"])
def test_a_pod_not_running_ready_and_addressed_is_no_node(pod):
    assert pod_node(pod, Role.DECODE, SETTINGS) is None


def test_annotations_set_port_bootstrap_port_and_engine():
    found = pod_node(make_pod(**{"pdfleet.io/port": "8000", "pdfleet.io/engine": "vllm",
                                 "pdfleet.io/bootstrap-port": "9000",
                                 "sglang.ai/bootstrap-port": "8998"}), Role.PREFILL, SETTINGS)
    assert found is not None
    assert (found.spec.url, found.spec.engine, found.spec.bootstrap_port) == (
        "http://10.0.0.7:8000", "vllm", 9000)


def test_sglang_routers_bootstrap_annotation_is_read_too():
    found = pod_node(make_pod(**{"sglang.ai/bootstrap-port": "8998"}), Role.PREFILL, SETTINGS)
    assert found is not None and found.spec.bootstrap_port == 8998


def test_an_ipv6_pod_gets_a_bracketed_url():
    found = pod_node(make_pod(ip="fd00::7"), Role.DECODE, SETTINGS)
    assert found is not None and found.spec.url == "http://[fd00::7]:30000"


def test_a_pod_being_deleted_drains():
    found = pod_node(make_pod(deleting=True), Role.DECODE, SETTINGS)
    assert found is not None and found.draining


@pytest.mark.parametrize(("annotations", "says"), [
    ({"pdfleet.io/port": "http"}, "pdfleet.io/port must be a port"),
    ({"pdfleet.io/port": "70000"}, "pdfleet.io/port must be a port"),
    ({"sglang.ai/bootstrap-port": "0"}, "bootstrap-port must be a port"),
    ({"pdfleet.io/engine": "trt"}, "engine must be one of"),
])
def test_a_bad_annotation_rejects_the_pod_naming_it(annotations, says):
    with pytest.raises(PodRejected, match=says) as rejected:
        pod_node(make_pod(**annotations), Role.DECODE, SETTINGS)
    assert "decode-0" in str(rejected.value)


def test_phases_move_only_forward():
    registry = FleetRegistry()
    node = registry.add(NodeSpec(url="http://10.0.0.7:30000", role=Role.DECODE),
                        phase=NodePhase.JOINING)
    assert not node.routable
    node.enter(NodePhase.SERVING)
    assert node.routable
    node.enter(NodePhase.DRAINING)
    assert node.draining and not node.routable
    with pytest.raises(ValueError, match="draining cannot become serving"):
        node.enter(NodePhase.SERVING)


def test_the_fleets_released_tags_come_from_its_serving_known_reachable_nodes():
    registry = FleetRegistry()
    nodes = [registry.add(NodeSpec(url=f"http://10.0.0.{i}:30000", role=Role.DECODE))
             for i in range(5)]
    assert fleet_released_tags(registry) == []
    nodes[0].released_tags, nodes[0].sleep_state_known = frozenset({"weights"}), True
    nodes[1].released_tags, nodes[1].sleep_state_known = frozenset({"kv_cache"}), True
    nodes[2].released_tags = frozenset({"cuda_graph"})  # not known: a guess, not counted
    nodes[3].released_tags, nodes[3].sleep_state_known = frozenset({"cuda_graph"}), True
    nodes[3].health = Health.DOWN
    nodes[4].released_tags, nodes[4].sleep_state_known = frozenset({"weights_drafter"}), True
    nodes[4].phase = NodePhase.JOINING
    assert fleet_released_tags(registry) == ["kv_cache", "weights"]


def test_the_discovery_config_takes_the_documented_keys_and_refuses_others():
    config = parse_config({"discovery": {"kubernetes": {
        "namespace": "rl", "kubeconfig": None, "port": 30000, "engine": "sglang",
        "resync_s": 60, "on_join": "match_fleet",
        "selectors": {"prefill": "app=sglang,role=prefill", "decode": "app=sglang,role=decode",
                      "mixed": None}}}})
    kubernetes = config.discovery.kubernetes
    assert kubernetes is not None
    assert list(kubernetes.selectors.by_role()) == [Role.PREFILL, Role.DECODE]
    for bad, says in [
        ({"selectors": {"decode": "app"}, "resync": 5},
         "unknown key 'discovery.kubernetes.resync'"),
        ({"selectors": {"decode": "role in (a"}}, "selectors.decode"),
        ({"selectors": {}}, "at least one role"),
        ({"selectors": {"decode": "app"}, "on_join": "wake"}, "on_join"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_config({"discovery": {"kubernetes": bad}})


def fleet_of(registry: FleetRegistry) -> DiscoveredFleet:
    settings = RouterSettings()
    plane = ControlPlane(registry, new_session(), settings, LocalControlLock())
    return DiscoveredFleet(registry, plane, settings, OnJoin.NONE)


def found(role: Role, port: int = 30000, draining: bool = False) -> PodNode:
    return PodNode(pod="p-0", draining=draining,
                   spec=NodeSpec(url=f"http://10.0.0.7:{port}", role=role))


@pytest.mark.parametrize("new_role_first", [True, False])
async def test_a_pod_relabelled_to_another_role_moves_whichever_watch_tells_first(
        new_role_first):
    registry = FleetRegistry()
    fleet = fleet_of(registry)
    fleet.update(Role.DECODE, "p-0", found(Role.DECODE))
    steps = [lambda: fleet.update(Role.PREFILL, "p-0", found(Role.PREFILL)),
             lambda: fleet.update(Role.DECODE, "p-0", None)]
    for step in steps if new_role_first else reversed(steps):
        step()
    (node,) = registry.all()
    assert (node.role, node.pod, node.phase) == (Role.PREFILL, "p-0", NodePhase.SERVING)
    assert not [e for e in fleet.events if e.event == "rejected"]


async def test_a_list_reconciles_joins_moves_drains_and_leaves():
    registry = FleetRegistry()
    fleet = fleet_of(registry)
    fleet.reconcile(Role.DECODE, {"p-0": found(Role.DECODE), "p-1": None})
    assert [n.url for n in registry.all()] == ["http://10.0.0.7:30000"]
    fleet.reconcile(Role.DECODE, {"p-0": found(Role.DECODE, port=30001, draining=True)})
    (node,) = registry.all()
    assert (node.url, node.phase) == ("http://10.0.0.7:30001", NodePhase.DRAINING)
    fleet.reconcile(Role.DECODE, {})
    assert registry.all() == []
    assert [e.event for e in reversed(fleet.events)] == ["joined", "left", "joined", "left"]
