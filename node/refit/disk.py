"""New weights from a safetensors file (`update_weights_from_disk`, and `--model` at start)."""

from __future__ import annotations

import os
import stat

from node.engine.model import TransformerWeights
from node.errors import BadRequest
from node.refit.checkpoint import CopyRun, check_load_format, read_layout
from node.refit.source import WeightsSource
from node.refit.transfer import WeightsCopier


class CheckpointFile(WeightsSource):
    """The file stays open from the check to the copy, so the copy reads the file that was
    checked even if the path is replaced meanwhile (a truncation still shows, as a short
    read)."""

    def __init__(
        self,
        path: str,
        load_format: str | None,
        weights: TransformerWeights,
        copier: WeightsCopier,
    ) -> None:
        self.path = path
        self.description = path
        self._load_format = load_format
        self._weights = weights
        self._copier = copier
        self._fd: int | None = None
        self._runs: list[CopyRun] = []

    def check(self) -> None:
        check_load_format(self._load_format)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise BadRequest(f"{self.path}: no such file", model_path=self.path) from None
        except OSError as error:
            raise BadRequest(f"{self.path}: cannot be read: {error.strerror}",
                             model_path=self.path) from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            raise BadRequest(f"{self.path}: not a regular file", model_path=self.path)
        config = self._weights.config
        self._runs = read_layout(self._fd, self.path, config.layout(), config.dtype)

    def copy(self) -> int:
        assert self._fd is not None, "check() first"
        return self._copier.copy(self._fd, self._runs, self._weights.flat)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
