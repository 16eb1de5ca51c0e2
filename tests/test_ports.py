"""Ports for fleets started on the fly: free, never handed out twice, and outside the range
the kernel takes outgoing connections' source ports from."""

from __future__ import annotations

import errno
import socket

from pdfleet.ports import _ephemeral_start, bind_error, free_port


def test_ports_are_distinct_free_and_below_the_ephemeral_range():
    ports = [free_port() for _ in range(500)]
    assert len(set(ports)) == len(ports)
    assert all(port < _ephemeral_start() for port in ports)
    for port in ports[:20]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))



def test_bind_error_says_why_a_port_is_taken_even_when_shared():
    port = free_port()
    assert bind_error("127.0.0.1", port) is None
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # as router workers bind
        holder.bind(("127.0.0.1", port))
        holder.listen()
        taken = bind_error("127.0.0.1", port)
    assert taken is not None and taken.errno == errno.EADDRINUSE
