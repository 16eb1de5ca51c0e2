"""Bytes from a weights file into the flat weights tensor, as fast as the machine reads.

Reads are `pread` calls split over a few threads: a single read() is bound by one core's
copy from the page cache, far below what the host's memory bus gives (plain torch measured
46-52 GB/s from a cached file into pinned memory on an H100 host), and a short read is a
clean error (an mmap of a file truncated under it would kill the process with SIGBUS).

On CPU the reads land straight in the tensor. On CUDA they land in one of two pinned host
buffers, allocated at the first update and reused by every later one, and each chunk goes to
the device on a side stream while the next chunk is read into the other buffer: the
disk->pinned and pinned->device copies (each ~50 GB/s) overlap instead of adding up
(25-27 GB/s in sequence).
"""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor, wait

import torch

from node.refit.checkpoint import CopyRun

# Enough threads to reach the memory bus's copy rate, not more than the cores to run them.
READ_THREADS = min(16, os.cpu_count() or 1)
# Below this, a piece is not worth a thread of its own.
_MIN_PIECE_BYTES = 4 << 20
# Each pinned buffer: big enough that per-chunk overheads vanish, small enough to allocate in
# a fraction of a second at the first update.
CHUNK_BYTES = 256 << 20


class FileTruncated(OSError):
    """The file is shorter than its checked header said: it changed after the check."""


def _pread_all(fd: int, offset: int, view: memoryview) -> None:
    done = 0
    while done < len(view):
        count = os.preadv(fd, [view[done:]], offset + done)
        if count == 0:
            raise FileTruncated(
                f"the file ended at byte {offset + done}, {len(view) - done} bytes short: "
                "it was truncated or replaced after it was checked")
        done += count


def _byte_view(tensor: torch.Tensor) -> memoryview:
    """The writable bytes of a contiguous CPU tensor. Not through `.numpy()`: that marks the
    storage as shared with numpy, and the cpu memory backend can then no longer free it."""
    nbytes = tensor.numel() * tensor.element_size()
    return memoryview((ctypes.c_char * nbytes).from_address(tensor.data_ptr())).cast("B")


class WeightsCopier:
    """Copies runs of a file into a flat tensor on the tensor's device."""

    def __init__(self, threads: int = READ_THREADS, chunk_bytes: int = CHUNK_BYTES) -> None:
        self._readers = ThreadPoolExecutor(threads, thread_name_prefix="weights-read")
        self._threads = threads
        self._chunk_bytes = chunk_bytes
        self._pinned: list[torch.Tensor] = []

    def read(self, fd: int, offset: int, into: memoryview) -> None:
        """`len(into)` bytes from `offset`, read by up to `threads` threads at once."""
        piece = max(_MIN_PIECE_BYTES, -(-len(into) // self._threads))
        futures = [
            self._readers.submit(_pread_all, fd, offset + start, into[start:start + piece])
            for start in range(0, len(into), piece)
        ]
        wait(futures)
        for future in futures:
            future.result()  # the first failure, raised here

    def copy(self, fd: int, runs: list[CopyRun], flat: torch.Tensor) -> int:
        if flat.device.type == "cuda":
            return self._copy_to_device(fd, runs, flat.view(torch.uint8))
        target = _byte_view(flat)
        for run in runs:
            self.read(fd, run.file_offset, target[run.flat_offset:run.flat_offset + run.nbytes])
        return sum(run.nbytes for run in runs)

    def _copy_to_device(self, fd: int, runs: list[CopyRun], target: torch.Tensor) -> int:
        buffers = self._pinned_buffers()
        views = [_byte_view(buffer) for buffer in buffers]
        side = torch.cuda.Stream(device=target.device)
        # Nothing the default stream still runs on the weights may see them change midway.
        side.wait_stream(torch.cuda.current_stream(target.device))
        copied: list[torch.cuda.Event | None] = [None] * len(buffers)
        chunks = [
            (run.file_offset + start, run.flat_offset + start,
             min(self._chunk_bytes, run.nbytes - start))
            for run in runs for start in range(0, run.nbytes, self._chunk_bytes)
        ]
        try:
            for index, (file_offset, flat_offset, nbytes) in enumerate(chunks):
                slot = index % len(buffers)
                previous = copied[slot]
                if previous is not None:
                    previous.synchronize()  # the buffer's last chunk has reached the device
                self.read(fd, file_offset, views[slot][:nbytes])
                with torch.cuda.stream(side):
                    target[flat_offset:flat_offset + nbytes].copy_(
                        buffers[slot][:nbytes], non_blocking=True)
                    done = torch.cuda.Event()
                    done.record(side)
                    copied[slot] = done
        finally:
            # Also after a failed read: the buffers are reused by the next update.
            side.synchronize()
        return sum(nbytes for _, _, nbytes in chunks)

    def _pinned_buffers(self) -> list[torch.Tensor]:
        if not self._pinned:
            self._pinned = [
                torch.empty(self._chunk_bytes, dtype=torch.uint8, pin_memory=True)
                for _ in range(2)
            ]
        return self._pinned
