"""TCP ports: whether one is free to listen on (every check before a server starts), and
free ones for fleets started on the fly (`pdfleet chaos`, the tests).

A port from `bind(0)` comes from the kernel's ephemeral range, which outgoing connections use
too: between picking it and a server binding it, a connection's source port can take it.
And two `bind(0)` calls in a row can return the same port once the first socket is closed;
two servers given one port make the second fail to bind while the first answers in its place.
So ports are picked below the ephemeral range where there is room, checked free, and handed
out at most once per process.
"""

from __future__ import annotations

import random
import socket
import threading
from functools import cache
from pathlib import Path

LOWEST = 20000  # below this, well-known services live
TRIES = 200

_given: set[int] = set()
_random = random.Random()  # its own: a test that seeds `random` changes nothing here
_lock = threading.Lock()


@cache
def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def address_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_error(host: str, port: int) -> OSError | None:
    """Why a server could not listen on `host:port` now, or None if it could. Bound as the
    servers bind (SO_REUSEADDR) but without SO_REUSEPORT, so a port that another process's
    router workers share counts as taken, not as one to join."""
    with socket.socket(address_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _any_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now and that this process has not handed out before."""
    highest = _ephemeral_start() - 1
    with _lock:
        for _ in range(TRIES):
            port = _random.randint(LOWEST, highest) if highest > LOWEST else _any_port(host)
            if port not in _given and bind_error(host, port) is None:
                _given.add(port)
                return port
    raise OSError(f"no free port found on {host} in {TRIES} tries")
