"""Outbox: frames waiting for a stream's only writer, sent several per write."""

from __future__ import annotations

import math
import os
import time
from typing import NoReturn, Protocol

import trio

MAX_WRITE_BYTES = 4 * 1024 * 1024
"""About the most bytes one ``send_all`` carries: a burst of frames is joined into few large
writes without building one huge buffer."""

UNJOINED_FRAME_BYTES = 64 * 1024
"""A frame this large is written on its own rather than joined with others: joining would
copy it into a fresh buffer of its size, which costs more than the extra system call (a
client's batch of a thousand 1 KiB requests is a megabyte, and a fresh megabyte is 256
page faults on the benchmark VM)."""

DIRECT_WRITE_SPACING = 0.0002
"""A frame for an idle stream is written by whoever queues it at most this often per stream:
a lone frame then costs no task switch, while the rest of a burst still goes out in one
write (seconds)."""


def write_now(fd: int, data: bytes) -> int:
    """Write what a non-blocking socket takes of ``data`` at once; how many bytes it took.

    0 if it took nothing, or if the connection failed (its writer finds out when it writes
    the rest).
    """
    try:
        return os.write(fd, data)
    except OSError:  # BlockingIOError included
        return 0


class DirectWrites:
    """Lets whoever queues a frame for an idle stream write it to the socket itself.

    The stream's only writer sets ``fd`` while it waits with nothing to write and clears it
    before writing again, so a direct write never interleaves with the writer's. At most one
    direct write per ``DIRECT_WRITE_SPACING`` leaves the rest of a burst to the writer.
    """

    __slots__ = ("_last", "fd")

    def __init__(self) -> None:
        self.fd: int | None = None
        """The socket, while the writer waits with nothing to write; None otherwise."""
        self._last = -math.inf
        """When the last direct write was claimed (``time.perf_counter``)."""

    def allowed(self) -> bool:
        """Whether ``claim`` would give the socket now."""
        return self.fd is not None and time.perf_counter() - self._last >= DIRECT_WRITE_SPACING

    def claim(self) -> int | None:
        """The socket to write one frame to now, or None (busy writer, or too soon)."""
        if not self.allowed():
            return None
        self._last = time.perf_counter()
        return self.fd


class LaterFrame(Protocol):
    """A frame encoded only when the writer takes it, so it can still grow until then."""

    def encode(self) -> bytes:
        """The frame's bytes (b"" for nothing); called once, by the writer."""
        ...


class Outbox:
    """A queue of encoded frames for one stream, drained by ``pump`` (its only writer)."""

    __slots__ = ("_direct", "_wakeup", "frames")

    def __init__(self) -> None:
        self.frames: list[bytes | LaterFrame] = []
        """Frames not yet handed to the stream, oldest first."""
        self._wakeup = trio.Event()
        self._direct = DirectWrites()
        """Open while ``pump`` waits with nothing queued: ``put`` then writes itself."""

    def writes_now(self) -> bool:
        """Whether ``put`` would write a frame at once (the stream is idle, spacing allows)."""
        return not self.frames and self._direct.allowed()

    def put_later(self, frame: LaterFrame) -> None:
        """Queue ``frame`` to be encoded when the writer gets to it."""
        self.frames.append(frame)
        self._wakeup.set()

    def put(self, frame: bytes) -> None:
        if not self.frames and (fd := self._direct.claim()) is not None:
            written = write_now(fd, frame)
            if written == len(frame):
                return
            # The rest goes first; being a new object, ``discard`` cannot take it back.
            frame = frame[written:]
        self.frames.append(frame)
        self._wakeup.set()

    def discard(self, frame: bytes) -> None:
        """Take ``frame`` back if it has not been written yet (its sender gave up)."""
        if self.frames and self.frames[-1] is frame:
            self.frames.pop()
            return
        for position, queued in enumerate(self.frames):
            if queued is frame:
                del self.frames[position]
                return

    def clear(self) -> None:
        self.frames.clear()

    async def pump(self, stream: trio.abc.SendStream) -> NoReturn:
        """Write queued frames to ``stream`` as they come, joining bursts of small ones into
        one write.

        Never returns; network errors from ``stream`` propagate to the caller.
        """
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        frames = self.frames
        while True:
            while not frames:
                self._wakeup = trio.Event()
                self._direct.fd = fd
                try:
                    await self._wakeup.wait()
                finally:
                    self._direct.fd = None
            size = 0
            chunk: list[bytes] = []
            while len(chunk) < len(frames) and size < MAX_WRITE_BYTES:
                frame = frames[len(chunk)]
                if not isinstance(frame, bytes):
                    frame = frames[len(chunk)] = frame.encode()
                if len(frame) >= UNJOINED_FRAME_BYTES:
                    if not chunk:
                        chunk.append(frame)
                    break
                chunk.append(frame)
                size += len(frame)
            del frames[: len(chunk)]
            await stream.send_all(chunk[0] if len(chunk) == 1 else b"".join(chunk))
