"""The KV hand-off payload: `u32 header length | JSON header | KV bytes | logits bytes`.

The header names the room, the prompt's token ids, the dtype and shape of both tensors, and
the version of the weights that computed them, so the decode node can check that the KV fits
its own model, weights and prompt before installing it.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import torch

CONTENT_TYPE = "application/x-pdfleet-kv"
VERSION = 2
_LENGTH = struct.Struct(">I")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class KVHandoff:
    room: int
    input_ids: list[int]
    kv: torch.Tensor  # [layers, 2, prompt_len, heads, head_dim] on CPU
    logits: torch.Tensor  # [vocab] float32 on CPU, for the first new token
    weight_version: str | None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _raw(tensor: torch.Tensor) -> bytes:
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode(handoff: KVHandoff) -> bytes:
    header = json.dumps(
        {
            "version": VERSION,
            "room": handoff.room,
            "input_ids": handoff.input_ids,
            "kv_dtype": _dtype_name(handoff.kv.dtype),
            "kv_shape": list(handoff.kv.shape),
            "logits_dtype": _dtype_name(handoff.logits.dtype),
            "logits_shape": list(handoff.logits.shape),
            "weight_version": handoff.weight_version,
        }
    ).encode()
    return b"".join((_LENGTH.pack(len(header)), header, _raw(handoff.kv), _raw(handoff.logits)))


def decode(data: bytes) -> KVHandoff:
    """Parse a payload; ValueError says what is wrong with a malformed one."""
    if len(data) < _LENGTH.size:
        raise ValueError("payload shorter than its header length")
    (header_len,) = _LENGTH.unpack_from(data)
    header = json.loads(data[_LENGTH.size : _LENGTH.size + header_len])
    if header.get("version") != VERSION:
        raise ValueError(f"payload version {header.get('version')}, expected {VERSION}")
    offset = _LENGTH.size + header_len
    tensors = []
    for name in ("kv", "logits"):
        dtype = _DTYPES.get(header[f"{name}_dtype"])
        if dtype is None:
            raise ValueError(f"unsupported {name} dtype {header[f'{name}_dtype']}")
        shape = header[f"{name}_shape"]
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        chunk = data[offset : offset + size]
        if len(chunk) != size:
            raise ValueError(f"payload truncated in {name}: {len(chunk)} of {size} bytes")
        tensors.append(
            torch.frombuffer(bytearray(chunk), dtype=torch.uint8).view(dtype).reshape(shape)
        )
        offset += size
    if offset != len(data):
        raise ValueError(f"payload has {len(data) - offset} trailing bytes")
    return KVHandoff(
        room=header["room"], input_ids=header["input_ids"], kv=tensors[0], logits=tensors[1],
        weight_version=header.get("weight_version"),
    )
