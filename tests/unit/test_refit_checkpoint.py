"""The weights file: what --save-weights writes loads back byte-exact (through the node's
reader and through the safetensors library), any valid safetensors file with the model's
tensors loads, and each way a file can fail to fit is refused naming the reason."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from node.engine.model import TransformerWeights
from node.errors import BadRequest
from node.options import NodeOptions
from node.refit.checkpoint import check_load_format, read_layout, write_checkpoint
from node.refit.disk import CheckpointFile
from node.refit.transfer import WeightsCopier
from node.runtime import model_config


def weights_of(seed: int | None = None, **options: object) -> TransformerWeights:
    config = model_config(NodeOptions(**options))  # type: ignore[arg-type]
    weights = TransformerWeights(config, torch.zeros(config.numel(), dtype=config.dtype))
    if seed is not None:
        weights.init_seeded(seed)
    return weights


@pytest.fixture(scope="module")
def copier() -> Iterator[WeightsCopier]:
    yield WeightsCopier(threads=2, chunk_bytes=1 << 20)


@pytest.fixture
def seed7_file(tmp_path: Path) -> Path:
    weights = weights_of(7)
    path = tmp_path / "seed7.safetensors"
    write_checkpoint(str(path), weights.flat, weights.config.layout())
    return path


def load(path: Path, copier: WeightsCopier, load_format: str | None = None) -> TransformerWeights:
    weights = weights_of()
    with CheckpointFile(str(path), load_format, weights, copier) as source:
        source.check()
        assert source.copy() == weights.flat.numel() * weights.flat.element_size()
    return weights


def test_a_written_file_loads_back_byte_exact(seed7_file: Path, copier: WeightsCopier) -> None:
    assert torch.equal(load(seed7_file, copier).flat, weights_of(7).flat)


def test_a_written_file_is_one_contiguous_run(seed7_file: Path) -> None:
    weights = weights_of()
    fd = os.open(seed7_file, os.O_RDONLY)
    try:
        runs = read_layout(fd, str(seed7_file), weights.config.layout(), weights.config.dtype)
    finally:
        os.close(fd)
    assert len(runs) == 1 and runs[0].flat_offset == 0
    assert runs[0].nbytes == weights.flat.numel() * weights.flat.element_size()


def test_the_safetensors_library_reads_a_written_file(seed7_file: Path) -> None:
    tensors = load_file(str(seed7_file))
    for name, param in weights_of(7).params.items():
        assert torch.equal(tensors[name], param)


def test_a_file_in_another_order_loads_tensor_by_tensor(
    seed7_file: Path, tmp_path: Path, copier: WeightsCopier
) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file(dict(reversed(list(load_file(str(seed7_file)).items()))), str(foreign))
    assert torch.equal(load(foreign, copier).flat, weights_of(7).flat)


def _header_only(path: Path, header: object) -> Path:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded)
    return path


@pytest.mark.parametrize(("damage", "named"), [
    (lambda data: data[:-1], "truncated or padded"),
    (lambda data: data + b"\0", "truncated or padded"),
    (lambda data: data[:5], "no header"),
    (lambda data: struct.pack("<Q", 1 << 40) + data[8:], "does not fit"),
    (lambda data: data[:8] + b"\xff" + data[9:], "header is not JSON"),
])
def test_a_damaged_file_is_refused_naming_the_damage(
    seed7_file: Path, copier: WeightsCopier, damage: object, named: str
) -> None:
    seed7_file.write_bytes(damage(seed7_file.read_bytes()))  # type: ignore[operator]
    with pytest.raises(BadRequest, match=named):
        load(seed7_file, copier)


def test_a_header_with_bad_offsets_is_refused(tmp_path: Path, copier: WeightsCopier) -> None:
    layout = weights_of().config.layout()
    header = {name: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, 4]}
              for name, shape in layout}
    with pytest.raises(BadRequest, match="embed has bad data_offsets"):
        load(_header_only(tmp_path / "bad.safetensors", header), copier)


def test_a_directory_is_not_a_weights_file(tmp_path: Path, copier: WeightsCopier) -> None:
    with pytest.raises(BadRequest, match="not a regular file"):
        load(tmp_path, copier)


@pytest.mark.parametrize("load_format", [None, "auto", "safetensors"])
def test_the_load_formats_that_mean_safetensors_are_accepted(load_format: str | None) -> None:
    check_load_format(load_format)


def test_another_load_format_is_refused() -> None:
    with pytest.raises(BadRequest, match="unknown load_format 'pt'"):
        check_load_format("pt")
