"""Memory backends: one class each behind `MemoryBackend` (see base.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # base.py loads torch; the command line reads BackendName before torch
    from node.memory.backends.base import MemoryBackend

BackendName = Literal["auto", "torch_memory_saver", "cpu", "none"]


def make_backend(name: BackendName, device: str) -> MemoryBackend:
    """The backend called `name`; `auto` is torch_memory_saver on CUDA, else cpu."""
    import torch

    if name == "auto":
        name = "torch_memory_saver" if device == "cuda" and torch.cuda.is_available() else "cpu"
    if name == "torch_memory_saver":
        if device != "cuda":
            raise ValueError("the torch_memory_saver backend needs --device cuda")
        from node.memory.backends.torch_memory_saver import TorchMemorySaverBackend

        return TorchMemorySaverBackend()
    if name == "cpu":
        if device != "cpu":
            raise ValueError("the cpu backend releases CPU memory: use it with --device cpu")
        from node.memory.backends.cpu import CpuBackend

        return CpuBackend()
    from node.memory.backends.none import DisabledBackend

    return DisabledBackend(device)
