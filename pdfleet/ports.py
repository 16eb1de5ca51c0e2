"""Free TCP ports on 127.0.0.1 for fleets started on the fly (`pdfleet chaos`, the tests).

The kernel may hand the same ephemeral port to two `bind(0)` calls in a row once the first
socket is closed, and two servers told the same port make the second fail to bind while the
first answers in its place. So a port is handed out at most once per process.
"""

from __future__ import annotations

import socket
import threading

_given: set[int] = set()
_lock = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    with _lock:
        while True:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
