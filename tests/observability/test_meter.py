"""The node's memory meter on CPU: this process's own memory, said how."""

from __future__ import annotations

import os
from types import SimpleNamespace

import psutil
import torch

from node.memory.meter import PROCESS_RSS, process_bytes, read_memory


def test_cpu_reading_is_this_process_rss_and_grows_with_its_allocations() -> None:
    before = read_memory("cpu")
    block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
    after = read_memory("cpu")
    assert after.measured_as == PROCESS_RSS
    assert after.total_bytes == psutil.virtual_memory().total
    assert after.used_bytes - before.used_bytes >= 60 << 20
    assert abs(after.used_bytes - psutil.Process().memory_info().rss) < 16 << 20
    del block


def test_nvml_processes_count_only_this_pid() -> None:
    me, other = os.getpid(), os.getpid() + 1
    processes = [SimpleNamespace(pid=other, usedGpuMemory=30 << 30),
                 SimpleNamespace(pid=me, usedGpuMemory=11 << 30),
                 SimpleNamespace(pid=me, usedGpuMemory=1 << 20)]
    assert process_bytes(processes, me) == (11 << 30) + (1 << 20)


def test_nvml_that_cannot_see_this_pid_gives_no_reading() -> None:
    me = os.getpid()
    assert process_bytes([SimpleNamespace(pid=me + 1, usedGpuMemory=1 << 30)], me) is None
    assert process_bytes([SimpleNamespace(pid=me, usedGpuMemory=None)], me) is None
