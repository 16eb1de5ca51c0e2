"""Measured memory: what a release frees and a resume restores is read here, never computed.

On CUDA the reading is this process's own device memory as NVML counts it
(`nvmlDeviceGetComputeRunningProcesses`), so nodes sharing a GPU each report only their own
bytes; the device's total and free memory stand beside it. Where NVML cannot see this process
(no NVML, or a PID namespace that hides our pid) the reading falls back to the device-wide
use, and `measured_as` says so. On CPU it is this process's resident set size, and
`free_bytes` is the memory the system could still hand out.

`pool` names the memory `total_bytes` belongs to (a GPU by its UUID, or a host's RAM):
nodes sharing one report the same total, and a fleet's total counts each pool once.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psutil
import torch

PROCESS_RSS = "process RSS"
PROCESS_GPU = "this process's GPU memory (NVML)"
DEVICE_WIDE = "device-wide GPU memory in use (NVML cannot see this process)"


@dataclass(frozen=True)
class MemoryReading:
    used_bytes: int
    free_bytes: int
    total_bytes: int
    measured_as: str
    pool: str


def process_bytes(processes: Iterable[Any], pid: int) -> int | None:
    """The device memory NVML attributes to `pid` (summed over its contexts), or None when
    `pid` is not among `processes` or NVML does not know its usage."""
    mine = [p.usedGpuMemory for p in processes if p.pid == pid]
    if not mine or any(used is None for used in mine):
        return None
    return sum(mine)


@functools.cache
def _nvml_device(index: int) -> Any | None:
    """The NVML handle of torch's CUDA device `index`, or None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(
            uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    except Exception:
        return None


def _own_gpu_bytes(index: int) -> int | None:
    handle = _nvml_device(index)
    if handle is None:
        return None
    import pynvml

    try:
        processes = pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
    except pynvml.NVMLError:
        return None
    return process_bytes(processes, os.getpid())


def read_memory(device: str) -> MemoryReading:
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        index = torch.cuda.current_device()
        pool = f"GPU {torch.cuda.get_device_properties(index).uuid}"
        own = _own_gpu_bytes(index)
        if own is None:
            return MemoryReading(total - free, free, total, DEVICE_WIDE, pool)
        return MemoryReading(own, free, total, PROCESS_GPU, pool)
    system = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    return MemoryReading(rss, system.available, system.total, PROCESS_RSS,
                         f"RAM of {socket.gethostname()}")
