"""Byte-level tokenizer: token i < 256 is byte i; then BOS and EOS.

Every string round-trips, so the tokenizer needs no vocabulary file and prefill and decode
nodes always agree on token ids.
"""

from __future__ import annotations

import codecs

BOS_ID = 256
EOS_ID = 257
VOCAB_SIZE = 258


def encode(text: str) -> list[int]:
    return [BOS_ID, *text.encode("utf-8")]


def decode(token_ids: list[int]) -> str:
    return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")


class IncrementalDecoder:
    """Turns a growing list of byte tokens into text without splitting a UTF-8 character.

    A multi-byte character whose bytes have not all arrived yet is held back, so streamed
    text never shows a replacement character that a later token would have completed.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""

    def push(self, token_id: int) -> None:
        if token_id < 256:
            self.text += self._decoder.decode(bytes([token_id]))

    def finish(self) -> None:
        self.text += self._decoder.decode(b"", final=True)
