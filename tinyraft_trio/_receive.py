"""Reading a connection's bytes with fewer steps than ``trio.SocketStream.receive_some``."""

from __future__ import annotations

import os

import trio


async def receive_some(
    stream: trio.SocketStream, max_bytes: int, *, drained: bool = False
) -> bytes:
    """Up to ``max_bytes`` bytes from ``stream``; b"" once the other side has closed it.

    ``drained``: the caller's last read returned less than it asked for, so the socket was
    empty then. This read then waits for data before trying, rather than making a system
    call that would most likely fail first (one per message of a request and its answer).

    Behaves as ``stream.receive_some`` towards other tasks: cancellable until it reads, a
    schedule point after reading at once, otherwise a wait until the socket is readable.
    It fails with the socket's own ``OSError`` (or ``trio.ClosedResourceError`` if the
    stream is closed while it waits) where Trio raises ``trio.BrokenResourceError``: our
    readers handle both alike.

    Why not Trio's: it wraps each read in an async context manager and a context manager,
    and raises and catches ``BlockingIOError`` inside both before it waits, which it does
    before nearly every message of a request and its answer. Each such read cost about
    6 us more CPU than this one (a ping-pong over a socketpair on the benchmark VM: 81 us
    per round trip with Trio's, 68 with this), and a sequential write makes about eight
    of them across the four processes. Skipping the failing read after a short one took
    the same ping-pong from 67-78 to 50-64 us (three alternating runs).
    """
    sock = stream.socket
    fd = sock.fileno()
    if not drained or fd < 0:  # a stream closed here fails in os.read, with EBADF
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:  # woken without data (spurious readiness)
            continue
