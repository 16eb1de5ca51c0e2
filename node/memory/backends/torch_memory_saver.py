"""CUDA release through torch_memory_saver: pages unmapped, virtual addresses kept.

Each region is allocated inside `torch_memory_saver.region(tag)`, so `pause(tag)` hands its
physical pages back to the driver while every tensor keeps its address. The library's own CPU
backup allocates its host buffer during the pause (seconds for a big model), so weights are
instead staged through a pinned host buffer allocated once, in the background right after
load, and reused by every cycle: release is one device-to-host copy of the flat weights tensor
and a pause; resume is a remap and one copy back. The KV pool is not backed up: it comes back
zeroed.

`hook_mode = "torch"` (a pluggable allocator) needs no LD_PRELOAD. The library calls exit(1)
on a double pause/resume or an out-of-memory resume; the controller prevents both.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch

from node.memory.backends.base import MemoryBackend, Region
from node.memory.tags import PRESERVED_TAGS, MemoryTag


class TorchMemorySaverBackend(MemoryBackend):
    name = "torch_memory_saver"
    # The driver maps pages in 2 MiB granules and cuBLAS may need a workspace right after a
    # resume; a resume that leaves less than this free is refused.
    resume_margin_bytes = 512 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__("cuda")
        from torch_memory_saver import torch_memory_saver

        torch_memory_saver.hook_mode = "torch"
        self._saver = torch_memory_saver
        self._pinner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pin-host-buffer")
        self._host_buffers: dict[MemoryTag, Future[torch.Tensor]] = {}

    def _allocate(self, tag: MemoryTag, numel: int, dtype: torch.dtype) -> torch.Tensor:
        with self._saver.region(tag.value):
            tensor = torch.empty(numel, dtype=dtype, device="cuda")
        if tag in PRESERVED_TAGS:
            nbytes = numel * tensor.element_size()
            self._host_buffers[tag] = self._pinner.submit(
                torch.empty, nbytes, dtype=torch.uint8, pin_memory=True
            )
        return tensor

    def host_buffer_ready(self) -> bool:
        return all(buffer.done() for buffer in self._host_buffers.values())

    def _release(self, region: Region) -> None:
        if region.tag in PRESERVED_TAGS:
            host = self._host_buffers[region.tag].result()
            host.copy_(region.tensor.view(torch.uint8))
        torch.cuda.synchronize()
        self._saver.pause(region.tag.value)
        # Blocks freed inside the region stay cached by PyTorch unless emptied, and would
        # stay invisible to other processes; cuBLAS workspaces are recreated on next use.
        torch._C._cuda_clearCublasWorkspaces()
        torch.cuda.empty_cache()

    def _resume(self, region: Region) -> None:
        self._saver.resume(region.tag.value)
        if region.tag in PRESERVED_TAGS:
            host = self._host_buffers[region.tag].result()
            region.tensor.view(torch.uint8).copy_(host, non_blocking=True)
        else:
            region.tensor.zero_()
        torch.cuda.synchronize()
