"""Weight-update groups: a trainer (rank 0) broadcasts new weights to nodes over a real
`torch.distributed` process group (gloo on CPU, NCCL on CUDA).

A group is built from its own rendezvous (a TCP store at the trainer's `master_address:
master_port`, keys under the group's name) and used as a bare process-group object: it is
never registered as the default group nor in torch's group table, so nothing else in the
process can reach it by accident and several groups may coexist. Joining blocks until every
rank has arrived or `timeout_s` passed; every collective on the group is bounded by the same
timeout.

The trainer's side (rank 0) joins with `join_group(..., rank=0)` and sends each tensor with
`WeightsGroup.broadcast`, in the order the update request names them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from node.engine.model import TransformerWeights
from node.errors import BadRequest, OperationConflict
from node.refit.checkpoint import SAFETENSORS_DTYPES
from node.refit.source import WeightsSource

Backend = Literal["gloo", "nccl"]
# The dtype names a trainer sends: torch's ("bfloat16", "torch.bfloat16") or safetensors'.
_DTYPES: dict[str, torch.dtype] = {
    **{str(dtype).removeprefix("torch."): dtype for dtype in SAFETENSORS_DTYPES.values()},
    **{str(dtype): dtype for dtype in SAFETENSORS_DTYPES.values()},
    **SAFETENSORS_DTYPES,
}


@dataclass
class WeightsGroup:
    name: str
    rank: int
    world_size: int
    backend: Backend
    process_group: dist.ProcessGroup
    store: dist.Store

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Rank 0 sends `tensor`; every other rank receives into it."""
        options = dist.BroadcastOptions()
        options.rootRank = 0
        options.rootTensor = 0
        self.process_group.broadcast([tensor], options).wait()

    def close(self) -> None:
        """Leave the group without waiting for the other ranks: NCCL's graceful shutdown
        blocks until every rank shuts down too, and the trainer may be gone or still in it."""
        abort = getattr(self.process_group, "abort", None)
        if abort is not None:
            abort()


def join_group(
    master_address: str,
    master_port: int,
    rank: int,
    world_size: int,
    name: str,
    backend: Backend,
    timeout_s: float,
) -> WeightsGroup:
    """Join (rank 0: host) the rendezvous and build the group; blocks until all ranks are in."""
    timeout = timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous(
        f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout))
    store = dist.PrefixStore(f"{name}/", store)
    group: dist.ProcessGroup
    if backend == "gloo":
        group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
    else:
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        group = dist.ProcessGroupNCCL(store, rank, world_size, options)
    return WeightsGroup(name, rank, world_size, backend, group, store)


class WeightsGroups:
    """The groups this node has joined, by name; a name is taken from the moment its join
    starts, so a second join of the same name is refused (409) rather than raced."""

    def __init__(self) -> None:
        self._groups: dict[str, WeightsGroup | None] = {}
        self._lock = threading.Lock()

    def reserve(self, name: str) -> None:
        with self._lock:
            if name in self._groups:
                state = "being joined" if self._groups[name] is None else "joined"
                raise OperationConflict(
                    f"a weights update group named {name!r} is already {state}; destroy it "
                    "first", group_name=name)
            self._groups[name] = None

    def joined(self, group: WeightsGroup) -> None:
        with self._lock:
            self._groups[group.name] = group

    def unreserve(self, name: str) -> None:
        with self._lock:
            self._groups.pop(name, None)

    def get(self, name: str) -> WeightsGroup:
        group = self._groups.get(name)
        if group is None:
            raise BadRequest(
                f"no weights update group named {name!r}: call init_weights_update_group first",
                group_name=name)
        return group

    def destroy(self, name: str) -> WeightsGroup:
        group = self.get(name)
        self.unreserve(name)
        group.close()
        return group


class Broadcast(WeightsSource):
    """Named tensors received from rank 0 of `group`, in the order given, each straight into
    its parameter's view of the weights region (through a staging tensor only when the
    trainer sends another dtype)."""

    def __init__(
        self,
        groups: WeightsGroups,
        group_name: str,
        names: list[str],
        dtypes: list[str],
        shapes: list[list[int]],
        weights: TransformerWeights,
    ) -> None:
        self.description = f"a broadcast on group {group_name!r} ({len(names)} tensors)"
        self._groups = groups
        self._group_name = group_name
        self._group: WeightsGroup | None = None
        self._names = names
        self._dtype_names = dtypes
        self._shapes = shapes
        self._weights = weights
        self._dtypes: list[torch.dtype] = []

    def check(self) -> None:
        names, params = self._names, self._weights.params
        if not len(names) == len(self._dtype_names) == len(self._shapes):
            raise BadRequest(
                f"names, dtypes and shapes must be as long as each other: {len(names)}, "
                f"{len(self._dtype_names)} and {len(self._shapes)}")
        seen: set[str] = set()
        for name, dtype_name, shape in zip(names, self._dtype_names, self._shapes, strict=True):
            if name not in params:
                raise BadRequest(f"the model has no tensor named {name!r}", tensor=name)
            if name in seen:
                raise BadRequest(f"{name} is named twice", tensor=name)
            seen.add(name)
            dtype = _DTYPES.get(dtype_name)
            if dtype is None:
                raise BadRequest(
                    f"{name}: unknown dtype {dtype_name!r} (one of {', '.join(_DTYPES)})",
                    tensor=name)
            if list(shape) != list(params[name].shape):
                raise BadRequest(
                    f"{name} has shape {list(shape)}, the model needs "
                    f"{list(params[name].shape)}", tensor=name)
            self._dtypes.append(dtype)
        self._group = self._groups.get(self._group_name)

    def copy(self) -> int:
        assert self._group is not None, "check() first"
        params = self._weights.params
        copied = 0
        for name, dtype in zip(self._names, self._dtypes, strict=True):
            param = params[name]
            if dtype == param.dtype:
                self._group.broadcast(param)
            else:
                staging = torch.empty(param.shape, dtype=dtype, device=param.device)
                self._group.broadcast(staging)
                param.copy_(staging)
            copied += param.numel() * param.element_size()
        device = self._weights.flat.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return copied
