"""Outbox: frames waiting for a stream's only writer, sent several per write."""

from __future__ import annotations

from typing import NoReturn

import trio

MAX_WRITE_BYTES = 4 * 1024 * 1024
"""About the most bytes one ``send_all`` carries: a burst of frames is joined into few large
writes without building one huge buffer."""


class Outbox:
    """A queue of encoded frames for one stream, drained by ``pump`` (its only writer)."""

    __slots__ = ("_wakeup", "frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        """Frames not yet handed to the stream, oldest first."""
        self._wakeup = trio.Event()

    def put(self, frame: bytes) -> None:
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
        """Write queued frames to ``stream`` as they come, joining bursts into one write.

        Never returns; network errors from ``stream`` propagate to the caller.
        """
        frames = self.frames
        while True:
            while not frames:
                self._wakeup = trio.Event()
                await self._wakeup.wait()
            size = 0
            count = 0
            while count < len(frames) and size < MAX_WRITE_BYTES:
                size += len(frames[count])
                count += 1
            data = b"".join(frames[:count])
            del frames[:count]
            await stream.send_all(data)
