"""Outbox: a frame for an idle stream is written by whoever queues it; bursts are joined."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from support import record_os_writes

from tinyraft_trio._outbox import Outbox


async def read_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await stream.receive_some(size - len(data))
    return data


async def idle_outbox(nursery: trio.Nursery) -> tuple[Outbox, trio.SocketStream]:
    """An outbox whose pump waits on one end of a socket pair; and the other end."""
    left, right = trio.socket.socketpair()
    outbox = Outbox()
    nursery.start_soon(outbox.pump, trio.SocketStream(left))
    await trio.testing.wait_all_tasks_blocked()
    return outbox, trio.SocketStream(right)


async def test_a_frame_for_an_idle_stream_is_written_before_any_task_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            outbox, receiver = await idle_outbox(nursery)
            writes = record_os_writes(monkeypatch)
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
    with trio.fail_after(2):
        async with trio.open_nursery() as nursery:
            outbox, receiver = await idle_outbox(nursery)
            record_os_writes(monkeypatch, take=3)
            frame = b"0123456789"
            outbox.put(frame)
            monkeypatch.undo()
            outbox.discard(frame)  # too late: three bytes are on the wire
            outbox.put(b"next")
            assert await read_exactly(receiver, 14) == b"0123456789next"
            nursery.cancel_scope.cancel()
