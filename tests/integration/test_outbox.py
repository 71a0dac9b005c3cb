"""Outbox: a frame for an idle stream is written by whoever queues it; bursts are joined."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio
import trio.testing

from tinyraft_trio._outbox import Outbox


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return data


async def test_a_frame_for_an_idle_stream_is_written_before_any_task_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def recording_write(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    left, right = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(left), trio.SocketStream(right)
    outbox = Outbox()
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, sender)
            await trio.testing.wait_all_tasks_blocked()
            monkeypatch.setattr(os, "write", recording_write)
            outbox.put(b"lone")
            assert writes == [b"lone"] and not outbox.frames
            # Right after it, a burst is queued for the pump and goes out in one write.
            for n in range(5):
                outbox.put(b"burst%d" % n)
            assert writes == [b"lone"] and len(outbox.frames) == 5
            expected = b"lone" + b"".join(b"burst%d" % n for n in range(5))
            assert await read_exactly(receiver, len(expected)) == expected
            nursery.cancel_scope.cancel()


async def test_the_rest_of_a_frame_written_in_part_goes_first_and_cannot_be_discarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_write = os.write

    def short_write(fd: int, data: Any) -> int:
        return real_write(fd, bytes(data)[:3])

    left, right = trio.socket.socketpair()
    sender, receiver = trio.SocketStream(left), trio.SocketStream(right)
    outbox = Outbox()
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.pump, sender)
            await trio.testing.wait_all_tasks_blocked()
            monkeypatch.setattr(os, "write", short_write)
            frame = b"0123456789"
            outbox.put(frame)
            monkeypatch.undo()
            outbox.discard(frame)  # too late: three bytes are on the wire
            outbox.put(b"next")
            assert await read_exactly(receiver, 14) == b"0123456789next"
            nursery.cancel_scope.cancel()
