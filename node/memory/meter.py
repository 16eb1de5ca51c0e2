"""Measured memory: what a release frees and a resume restores is read here, never computed.

On CUDA the reading is device-wide (`torch.cuda.mem_get_info`), so memory returned to the
driver counts however it was freed. On CPU it is this process's resident set size, and
`free_bytes` is the memory the system could still hand out.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch


@dataclass(frozen=True)
class MemoryReading:
    used_bytes: int
    free_bytes: int
    total_bytes: int


def read_memory(device: str) -> MemoryReading:
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        return MemoryReading(used_bytes=total - free, free_bytes=free, total_bytes=total)
    system = psutil.virtual_memory()
    rss = psutil.Process().memory_info().rss
    return MemoryReading(used_bytes=rss, free_bytes=system.available, total_bytes=system.total)
