"""Which pod is which node: a pod is a node while it runs, is Ready and has an address.

Its URL is `http://{podIP}:{port}`, the port from the annotation `pdfleet.io/port` or the
configured default; its bootstrap port (prefill) from `pdfleet.io/bootstrap-port`, or the
annotation SGLang's own router reads, `sglang.ai/bootstrap-port`; its engine from
`pdfleet.io/engine` or the configured default. A pod being deleted (`deletionTimestamp` set)
that is still Ready is a node that drains.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightkube.resources.core_v1 import Pod
from pydantic import ValidationError

from pdfleet.vocabulary import Role
from router.config import KubernetesDiscovery, NodeSpec, describe_validation_error

PORT_ANNOTATION = "pdfleet.io/port"
BOOTSTRAP_PORT_ANNOTATIONS = ("pdfleet.io/bootstrap-port", "sglang.ai/bootstrap-port")
ENGINE_ANNOTATION = "pdfleet.io/engine"


class PodRejected(ValueError):
    """A pod that asks to be a node in a way the router cannot take (a bad annotation)."""


@dataclass(frozen=True, slots=True)
class PodNode:
    """A pod that is a node now: where it serves, and whether it is on its way out."""

    pod: str
    spec: NodeSpec
    draining: bool


def pod_name(pod: Pod) -> str:
    assert pod.metadata is not None and pod.metadata.name is not None
    return pod.metadata.name


def serving(pod: Pod) -> bool:
    """Running, its Ready condition true, and addressed."""
    status = pod.status
    if status is None or status.phase != "Running" or not status.podIP:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def pod_node(pod: Pod, role: Role, settings: KubernetesDiscovery) -> PodNode | None:
    """The node `pod` is in `role`, or None while it is not one; PodRejected when its
    annotations cannot make a node."""
    if not serving(pod):
        return None
    assert pod.metadata is not None and pod.status is not None
    annotations = pod.metadata.annotations or {}
    name = pod_name(pod)
    bootstrap = next((annotations[a] for a in BOOTSTRAP_PORT_ANNOTATIONS if a in annotations),
                     None)
    port = annotations.get(PORT_ANNOTATION, settings.port)
    host = pod.status.podIP
    if host is not None and ":" in host:
        host = f"[{host}]"  # an IPv6 address in a URL
    try:
        spec = NodeSpec(
            url=f"http://{host}:{_port(port, PORT_ANNOTATION, name)}", role=role,
            bootstrap_port=None if bootstrap is None else _port(
                bootstrap, "bootstrap-port", name),
            engine=annotations.get(ENGINE_ANNOTATION, settings.engine))
    except ValidationError as exc:
        raise PodRejected(f"pod {name}: {describe_validation_error(exc)}") from None
    return PodNode(pod=name, spec=spec, draining=pod.metadata.deletionTimestamp is not None)


def _port(value: str | int, annotation: str, pod: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise PodRejected(f"pod {pod}: annotation {annotation} must be a port (1-65535), "
                          f"got {value!r}")
    return port
