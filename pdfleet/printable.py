"""Error text made fit for a person: what CLI tables show of a node's error.

A node may answer an error with a binary body; the router keeps it, decoded with
replacement characters, in its JSON. Shown as is, that is a wall of U+FFFD. Here such text
becomes its printable prefix and `<N bytes, not text>`. The dashboard's `printable` in
`router/dashboard/dashboard.js` follows the same rule.
"""

from __future__ import annotations

_KEPT_CONTROLS = frozenset("\t\n")
_REPLACEMENT = "\ufffd"
PREFIX_CHARS = 80


def _unprintable(char: str) -> bool:
    """A control character other than tab and newline, or the replacement character a failed
    UTF-8 decode leaves for an undecodable byte."""
    if char == _REPLACEMENT:
        return True
    return char not in _KEPT_CONTROLS and (ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0)


def _byte_count(text: str) -> int:
    """Bytes of the body `text` was decoded from: each replacement character stood for one
    undecodable byte, though it takes three in UTF-8."""
    return len(text.encode("utf-8", errors="surrogatepass")) - 2 * text.count(_REPLACEMENT)


def printable(text: str) -> str:
    """`text` unchanged if it is all printable; else its printable prefix (at most
    `PREFIX_CHARS` characters) followed by `<N bytes, not text>`, N being the size of
    the rest."""
    for index, char in enumerate(text):
        if _unprintable(char):
            prefix = text[:index][:PREFIX_CHARS]
            return f"{prefix}<{_byte_count(text[len(prefix):])} bytes, not text>"
    return text
