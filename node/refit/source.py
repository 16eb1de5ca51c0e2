"""Where new weights come from, behind one interface the memory controller drives.

`check` runs first, on the event loop, and must find every mismatch (a 400 naming it) before
anything is touched; `copy` then runs in a worker thread under the engine's memory lock and
writes into the weights region in place. An exception from `copy` means the region may hold
a mix of old and new weights.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType


class WeightsSource(ABC):
    #: What the update's reply says the weights came from.
    description: str

    @abstractmethod
    def check(self) -> None:
        """Raise BadRequest naming the first tensor (or the file) that does not fit."""

    @abstractmethod
    def copy(self) -> int:
        """Write the new weights into the model's tensors; the bytes written."""

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to let go of
        """Let go of what `check` opened (a file)."""

    def __enter__(self) -> WeightsSource:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
