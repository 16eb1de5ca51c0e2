"""Real release on CPU: region storage is freed, so the process's resident memory drops.

Weights are written to a spill file and read back byte-exact on resume; the KV pool is simply
dropped and comes back zeroed. A spill file is anonymous (unlinked from the start), so it
disappears with the process however that ends, a crash or SIGKILL included. Freeing goes
through `untyped_storage().resize_(0)`, which keeps every tensor object (and every view into
the region) valid while its bytes are gone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import tempfile
from typing import BinaryIO

import torch

from node.memory.backends.base import MemoryBackend, Region
from node.memory.tags import PRESERVED_TAGS, MemoryTag

# Spill and restore go through a bounded staging buffer: the region's bytes never exist twice.
_STAGING_BYTES = 16 * 1024 * 1024


def _load_malloc_trim() -> ctypes._CFuncPtr | None:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None)
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
    return trim


class CpuBackend(MemoryBackend):
    name = "cpu"

    def __init__(self) -> None:
        super().__init__("cpu")
        self._spills: dict[MemoryTag, BinaryIO] = {}
        # Large regions are mmap'ed by glibc and go back to the system when freed; smaller ones
        # may sit in the heap, which malloc_trim hands back.
        self._malloc_trim = _load_malloc_trim()

    def _allocate(self, tag: MemoryTag, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(numel, dtype=dtype)

    def _release(self, region: Region) -> None:
        if region.tag in PRESERVED_TAGS:
            self._spill(region)
        region.tensor.untyped_storage().resize_(0)
        if self._malloc_trim is not None:
            self._malloc_trim(0)

    def _resume(self, region: Region) -> None:
        region.tensor.untyped_storage().resize_(region.nbytes)
        if region.tag in PRESERVED_TAGS:
            self._restore(region)
        else:
            region.tensor.zero_()

    def _spill(self, region: Region) -> None:
        data = region.tensor.view(torch.uint8)
        staging = torch.empty(min(_STAGING_BYTES, data.numel()), dtype=torch.uint8)
        staging_bytes = staging.numpy()
        spill = tempfile.TemporaryFile(prefix="pdfleet-spill-")
        try:
            for chunk in data.split(staging.numel()):
                staging[: chunk.numel()].copy_(chunk)
                spill.write(staging_bytes[: chunk.numel()].data)
        except BaseException:
            spill.close()
            raise
        self._spills[region.tag] = spill

    def _restore(self, region: Region) -> None:
        data = region.tensor.view(torch.uint8)
        staging = torch.empty(min(_STAGING_BYTES, data.numel()), dtype=torch.uint8)
        staging_bytes = staging.numpy()
        with self._spills.pop(region.tag) as spill:
            spill.seek(0)
            for chunk in data.split(staging.numel()):
                view = staging_bytes[: chunk.numel()]
                if spill.readinto(view.data) != chunk.numel():
                    raise OSError(f"the spill file is shorter than the {region.tag.value} region")
                chunk.copy_(staging[: chunk.numel()])
