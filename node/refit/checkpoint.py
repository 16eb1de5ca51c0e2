"""The node's weights as a safetensors file: written by `--save-weights`, checked against the
model before anything is loaded, and read by `--model` and `update_weights_from_disk`.

The header is parsed here rather than by the safetensors library, so that a bad file is
refused with the exact reason (which tensor, which shape, how many bytes are missing) before
a byte of the model is touched, and so that the copy afterwards knows where each tensor's
bytes lie in the file and can read them straight into the weights region.

A file this node writes keeps the model's layout order, so its data section is byte for byte
the flat weights tensor and the copy is one contiguous run; any valid safetensors file with
the right tensors loads too, tensor by tensor.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Any

import torch

from node.errors import BadRequest

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16,
}
DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}
LOAD_FORMATS = (None, "auto", "safetensors")
_LENGTH = struct.Struct("<Q")
# safetensors' own bound on a header: anything larger is not a weights file.
_MAX_HEADER_BYTES = 100 << 20
_WRITE_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class CopyRun:
    """A stretch of bytes to copy: `nbytes` from `file_offset` in the file to `flat_offset`
    in the flat weights tensor (as bytes)."""

    file_offset: int
    flat_offset: int
    nbytes: int


def check_load_format(load_format: str | None) -> None:
    if load_format not in LOAD_FORMATS:
        raise BadRequest(
            f"unknown load_format {load_format!r}: this node reads safetensors files "
            "(load_format null, \"auto\" or \"safetensors\")",
            load_format=load_format,
        )


def read_layout(
    fd: int, path: str, layout: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype
) -> list[CopyRun]:
    """Check the open file `fd` against the model's layout (names, shapes, dtype, and that
    the file holds every byte its header promises); the runs that copy it into the flat
    tensor. BadRequest names the first problem."""
    size = os.fstat(fd).st_size
    header, data_start = _header(fd, path, size)
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    expected = dict(layout)
    missing = [name for name in expected if name not in tensors]
    unexpected = sorted(name for name in tensors if name not in expected)
    if missing or unexpected:
        raise BadRequest(
            f"{path}: tensors do not match the model: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}",
            missing=missing[:20], unexpected=unexpected[:20],
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    runs: list[CopyRun] = []
    flat_offset = 0
    data_end = 0
    for name, shape in layout:
        begin, end = _check_tensor(path, name, tensors[name], shape, dtype, itemsize)
        data_end = max(data_end, end)
        runs.append(CopyRun(data_start + begin, flat_offset, end - begin))
        flat_offset += end - begin
    if data_start + data_end != size:
        raise BadRequest(
            f"{path}: the file is {size} bytes but its header describes "
            f"{data_start + data_end}: truncated or padded",
            file_bytes=size, described_bytes=data_start + data_end,
        )
    return _merged(runs)


def _header_length(fd: int, path: str, size: int) -> int:
    raw = os.pread(fd, _LENGTH.size, 0)
    if len(raw) < _LENGTH.size:
        raise BadRequest(f"{path}: not a safetensors file ({size} bytes, no header)")
    (length,) = _LENGTH.unpack(raw)
    if length > min(_MAX_HEADER_BYTES, size - _LENGTH.size):
        raise BadRequest(
            f"{path}: not a safetensors file (header length {length} does not fit in "
            f"{size} bytes)")
    return length


def _header(fd: int, path: str, size: int) -> tuple[dict[str, Any], int]:
    """The parsed header, and where the data section starts."""
    length = _header_length(fd, path, size)
    raw = os.pread(fd, length, _LENGTH.size)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"{path}: not a safetensors file (header is not JSON: {error})") from None
    if not isinstance(header, dict):
        raise BadRequest(f"{path}: not a safetensors file (header is not a JSON object)")
    return header, _LENGTH.size + length


def _check_tensor(
    path: str, name: str, entry: Any, shape: tuple[int, ...], dtype: torch.dtype, itemsize: int
) -> tuple[int, int]:
    """The tensor's data offsets, once its dtype, shape and size fit the model's."""
    if not isinstance(entry, dict):
        raise BadRequest(f"{path}: header entry of {name} is not an object")
    file_dtype = entry.get("dtype")
    if SAFETENSORS_DTYPES.get(file_dtype) != dtype:
        raise BadRequest(
            f"{path}: {name} has dtype {file_dtype}, the model needs {DTYPE_NAMES[dtype]}",
            tensor=name)
    file_shape = entry.get("shape")
    if file_shape != list(shape):
        raise BadRequest(
            f"{path}: {name} has shape {file_shape}, the model needs {list(shape)}",
            tensor=name)
    offsets = entry.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[1] - offsets[0] != math.prod(shape) * itemsize):
        raise BadRequest(f"{path}: {name} has bad data_offsets {offsets}", tensor=name)
    return offsets[0], offsets[1]


def _merged(runs: list[CopyRun]) -> list[CopyRun]:
    """Adjacent runs (next in the file and next in the tensor) as one."""
    merged: list[CopyRun] = []
    for run in sorted(runs, key=lambda r: r.file_offset):
        last = merged[-1] if merged else None
        if (last is not None and last.file_offset + last.nbytes == run.file_offset
                and last.flat_offset + last.nbytes == run.flat_offset):
            merged[-1] = CopyRun(last.file_offset, last.flat_offset, last.nbytes + run.nbytes)
        else:
            merged.append(run)
    return merged


def write_checkpoint(
    path: str, flat: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]]
) -> int:
    """Write the flat weights tensor as a safetensors file in layout order; bytes written."""
    itemsize = flat.element_size()
    dtype = DTYPE_NAMES[flat.dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt", "writer": "pdfleet"}}
    offset = 0
    for name, shape in layout:
        nbytes = math.prod(shape) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    data = flat.view(torch.uint8)
    with open(path, "wb") as out:
        out.write(_LENGTH.pack(len(encoded)))
        out.write(encoded)
        for chunk in data.split(_WRITE_CHUNK_BYTES):
            out.write(chunk.cpu().numpy().data)
    return _LENGTH.size + len(encoded) + data.numel()
