"""Memory backends: one class each behind `MemoryBackend` (see base.py)."""

from __future__ import annotations

from node.memory.backends.base import MemoryBackend
from node.options import NodeOptions


def make_backend(options: NodeOptions) -> MemoryBackend:
    """Pick the backend named in the options; `auto` is torch_memory_saver on CUDA, else cpu."""
    import torch

    name = options.memory_backend
    if name == "auto":
        name = (
            "torch_memory_saver"
            if options.device == "cuda" and torch.cuda.is_available()
            else "cpu"
        )
    if name == "torch_memory_saver":
        if options.device != "cuda":
            raise ValueError("the torch_memory_saver backend needs --device cuda")
        from node.memory.backends.torch_memory_saver import TorchMemorySaverBackend

        return TorchMemorySaverBackend()
    if name == "cpu":
        if options.device != "cpu":
            raise ValueError("the cpu backend releases CPU memory: use it with --device cpu")
        from node.memory.backends.cpu import CpuBackend

        return CpuBackend()
    from node.memory.backends.none import DisabledBackend

    return DisabledBackend(options.device)
