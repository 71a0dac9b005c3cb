"""Free TCP ports on the loopback interface, for local clusters (the demo, tests)."""

from __future__ import annotations

import socket


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All are bound at once before any is released, so they differ; another program may
    still take one before it is used.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
