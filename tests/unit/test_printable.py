"""`printable`: the error text CLI tables show is text, whatever body a node answered."""

from __future__ import annotations

from pdfleet.printable import PREFIX_CHARS, printable


def test_text_is_unchanged() -> None:
    assert printable("HTTP 500: node error\n\tat line 3") == "HTTP 500: node error\n\tat line 3"


def test_a_binary_body_is_its_printable_prefix_and_its_size() -> None:
    body = bytes(range(256)) * 2
    decoded = body.decode("utf-8", errors="replace")
    shown = printable(f"HTTP 500: {decoded}")
    assert shown == "HTTP 500: <512 bytes, not text>"


def test_the_prefix_is_capped() -> None:
    shown = printable("e" * 500 + "\ufffd\ufffd")
    assert shown == "e" * PREFIX_CHARS + f"<{500 - PREFIX_CHARS + 2} bytes, not text>"


def test_utf8_text_counts_its_bytes() -> None:
    assert printable("ok \x00é") == "ok <3 bytes, not text>"
