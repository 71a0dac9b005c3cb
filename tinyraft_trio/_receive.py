"""Reading a connection's bytes with fewer steps than ``trio.SocketStream.receive_some``."""

from __future__ import annotations

import os

import trio


class SocketReader:
    """The reading side of one connection: its only reader's, which keeps it for the
    connection's life, so that it knows whether its last read emptied the socket."""

    __slots__ = ("_drained", "_stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._drained = False
        """The last read returned less than it asked for: the socket was empty then."""

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` bytes from the stream; b"" once the other side has closed it.

        After a read that returned less than it asked for (the socket was empty then), the
        next one waits for data before it reads, rather than first making a system call that
        would most likely fail (one per message of a request and its answer).

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
        sock = self._stream.socket
        fd = sock.fileno()
        if not self._drained or fd < 0:  # a stream closed here fails in os.read, with EBADF
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                pass
            else:
                self._drained = len(data) < max_bytes
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:  # woken without data (spurious readiness)
                continue
            self._drained = len(data) < max_bytes
            return data
